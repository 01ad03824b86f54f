"""Run inside a venv where the hids-bytecode wheel is installed: load (pinned) and watch one
program through the loader's API while a child process does real activity, then print the
events read and the in-kernel counters as JSON, and unload.

usage: driver.py PROGRAM SCENARIO   (the scenarios are in tests/test_probes.py)
"""

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

from hids_bytecode import api
from hids_bytecode import libbpf as lb
from hids_bytecode.btf_layout import schema_from_object_file
from hids_bytecode.events import read_counters
from hids_bytecode.hostinfo import gather
from hids_bytecode.pins import pin_dir

program, scenario = sys.argv[1], sys.argv[2]
events = []
errors = []


def consume():
    try:
        for event in api.watch(program):
            events.append(event)
    except Exception as exc:  # reported to the test, which fails on it
        errors.append(f"{type(exc).__name__}: {exc}")


facts = gather()
loaded = api.load(program, facts=facts)  # pins; this process becomes the agent, whose events are dropped
try:
    _, path = api.object_for(loaded.choice, facts)
    lib = lb.get()
    schema = schema_from_object_file(lib, path)
    counters_fd = lib.bpf_obj_get(str(pin_dir(program) / "maps" / "counters").encode())
    threading.Thread(target=consume, daemon=True).start()
    time.sleep(1)
    child = subprocess.run([sys.executable, "-c", scenario], capture_output=True, text=True)
    before = read_counters(lib, counters_fd, schema)  # the child's events are all counted by now
    # Read until every event counted so far has come through (a busy host can hold the reader back
    # for seconds); a lost one never comes, and the test then sees fewer read than `before` says.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not errors:
        got = Counter(e.get("event") for e in list(events))
        if all(got[kind] >= counts.get("emitted", 0) for kind, counts in before.items()):
            break
        time.sleep(0.05)
    read = list(events)
    after = read_counters(lib, counters_fd, schema)  # taken after `read`: counts every event in it
    print(json.dumps({"events": read, "errors": errors, "counters_before": before, "counters_after": after,
                      "load": loaded.as_dict(), "driver_tgid": os.getpid(),
                      "child": {"rc": child.returncode, "out": child.stdout, "err": child.stderr}}), flush=True)
finally:
    api.unload(program)
os._exit(0)
