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
    time.sleep(1.5)
    before = read_counters(lib, counters_fd, schema)  # everything counted so far has been drained...
    time.sleep(1.5)
    after = read_counters(lib, counters_fd, schema)  # ...and nothing read was counted after this
    read = list(events)
    print(json.dumps({"events": read, "errors": errors, "counters_before": before, "counters_after": after,
                      "load": loaded.as_dict(), "driver_tgid": os.getpid(),
                      "child": {"rc": child.returncode, "out": child.stdout, "err": child.stderr}}), flush=True)
finally:
    api.unload(program)
os._exit(0)
