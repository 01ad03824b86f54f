"""Runs inside the verification VM, never on the build host: for every object built for the running
kernel, select it through the shipped loader, load it, attach it, trigger events and read them back.

Only the standard library and the installed `hids_bytecode` package are available here. The result
is one JSON document printed between markers on the serial console, which `vm.py` cuts out.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

from hids_bytecode import libbpf as lb
from hids_bytecode.attach import attach_all, open_and_load, write_agent_tgid
from hids_bytecode.btf_layout import schema_from_btf
from hids_bytecode.errors import HidsError
from hids_bytecode.events import iter_events
from hids_bytecode.hostinfo import gather
from hids_bytecode.integrity import read_verified
from hids_bytecode.kallsyms import WrapperFact
from hids_bytecode.manifest import load_manifest
from hids_bytecode.mounts import ensure_bpf_filesystems
from hids_bytecode.selection import select

BEGIN, END = "===HIDS-VERIFY-BEGIN===", "===HIDS-VERIFY-END==="
EVENT_WAIT_S = 20.0
QUIET_S = 1.5
NO_OLD_KPROBES = ("non-wrapper syscall kprobes (sys_*) exist only on kernels older than 4.17, which Debian's "
                  "archive no longer serves; this variant's tracepoint alternatives attached instead")


def _variant_facts(facts: Any, wrapper: bool) -> Any:
    """Host facts with the syscall wrapper overridden, so every variant can be selected here."""
    fake = WrapperFact(wrapper, facts.wrapper.prefix, "override by hids verify", 0, False)
    return dataclasses.replace(facts, wrapper=fake)


def _trigger(port: int) -> int:
    """A child process (the agent's own tgid is filtered in-kernel) that execs, opens a file,
    connects to 127.0.0.1 and mounts and unmounts a tmpfs, so each object has something to report."""
    code = ("import ctypes, os, socket; open('/etc/hostname').read(); "
            f"socket.create_connection(('127.0.0.1', {port}), timeout=5).close(); "
            "os.makedirs('/tmp/hids-mnt', exist_ok=True); libc = ctypes.CDLL(None, use_errno=True); "
            "libc.mount(b'none', b'/tmp/hids-mnt', b'tmpfs', 0, None) == 0 and libc.umount2(b'/tmp/hids-mnt', 0)")
    child = subprocess.Popen([sys.executable, "-c", code])
    child.wait(timeout=60)
    return child.pid


def _read_events(loaded: Any, schema: Any, child: int) -> dict[str, int]:
    """Events of the trigger child by kind: read until every kind the object declares was seen, or
    the stream went quiet after the first ones (every object declares the whole shared event set,
    but each emits only its own kinds)."""
    wanted = {layout.name for layout in schema.events.values()}
    seen: dict[str, int] = {}
    stop = threading.Event()

    def pump() -> None:
        counters = loaded.map_fd("counters") if "counters" in loaded.maps else None
        try:
            for event in iter_events(loaded.lib, loaded.map_fd("events"), schema, counters):
                if stop.is_set():
                    return
                if event.get("hdr", {}).get("tgid") == child:
                    seen[event["event"]] = seen.get(event["event"], 0) + 1
        except HidsError:
            # Expected once the caller closed the object: its maps are gone and polling ends here.
            if not stop.is_set():
                raise

    threading.Thread(target=pump, daemon=True).start()
    deadline, quiet_since, last = time.monotonic() + EVENT_WAIT_S, time.monotonic(), 0
    while time.monotonic() < deadline and not wanted <= set(seen):
        time.sleep(0.2)
        total = sum(seen.values())
        if total != last:
            quiet_since, last = time.monotonic(), total
        elif total and time.monotonic() - quiet_since > QUIET_S:
            break
    stop.set()
    return dict(seen)


def _check(entry: Any, facts: Any, listener: socket.socket) -> dict[str, Any]:
    row: dict[str, Any] = {"unit": entry.unit, "program": entry.program, "variant": entry.raw["variant"],
                           "select": "fail", "load": "not run", "attach": "not run", "event": "not run",
                           "programs": [], "events": {}, "error": "", "verifier_log": ""}
    try:
        choice = select(load_manifest(), _variant_facts(facts, entry.wrapper), entry.program,
                        debug=entry.debug, strict=True)
    except HidsError as exc:
        row["error"] = f"selection: {exc}"
        return row
    if choice.entry.unit != entry.unit:
        row["error"] = f"selection picked {choice.entry.unit}"
        return row
    row["select"] = "ok"
    lib = lb.get()
    data = read_verified(entry.object_path, entry.sha256)
    try:
        loaded = open_and_load(lib, data, entry.unit)
    except HidsError as exc:
        row.update(load="fail", error=str(exc), verifier_log=_full_log(lib, data))
        return row
    row["load"] = "ok"
    try:
        write_agent_tgid(loaded)
        try:
            reports = attach_all(loaded)
        except HidsError as exc:
            row.update(attach="fail", error=str(exc))
            reports = loaded.reports
        row["programs"] = [_program_row(r, entry.wrapper) for r in reports]
        if row["attach"] != "fail":
            failed = [p for p in row["programs"] if p["status"] == "failed"]
            row["attach"] = "fail" if failed else "ok"
            if failed:
                row["error"] = f"{failed[0]['program']}: {failed[0]['message']}"
        if loaded.links:
            schema = schema_from_btf(lib, lib.bpf_object__btf(loaded.obj))
            child = _trigger(listener.getsockname()[1])
            row["events"] = _read_events(loaded, schema, child)
            row["event"] = "ok" if row["events"] else "fail"
            if not row["events"] and not row["error"]:
                row["error"] = f"no event of the trigger process within {EVENT_WAIT_S:.0f}s"
    finally:
        loaded.close()
    return row


def _full_log(lib: Any, data: bytes) -> str:
    """libbpf's whole output for a load of `data`, verifier log included: the loader keeps only the
    one-line reason of a rejection, so the failed load is repeated here with every message kept."""
    buf = ctypes.create_string_buffer(data, len(data))
    with lb.capture() as log:
        obj = lib.bpf_object__open_mem(buf, len(data), None)
        if obj:
            lib.bpf_object__load(obj)
            lib.bpf_object__close(obj)
    return "\n".join(text for _, text in log)


def _program_row(report: Any, wrapper: bool) -> dict[str, str]:
    status, message = report.status, report.message
    if not wrapper and report.family == "kprobe" and status in ("not supported by this kernel", "skipped"):
        status, message = "n/a", NO_OLD_KPROBES
    return {"program": report.name, "section": report.section, "status": status, "message": message}


def main() -> int:
    doc: dict[str, Any] = {"uname": os.uname().release, "machine": os.uname().machine, "rows": [], "error": ""}
    try:
        ensure_bpf_filesystems()
        facts = gather()
        manifest = load_manifest()
        doc["btf"] = facts.btf
        entries = [e for e in manifest.entries
                   if e.kind == "exact" and e.release == facts.release and e.arch == facts.arch]
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        for entry in sorted(entries, key=lambda e: e.unit):
            print(f"hids-verify: {entry.unit}", flush=True)
            doc["rows"].append(_check(entry, facts, listener))
    except Exception as exc:  # the host must always get a document, whatever broke in here
        doc["error"] = f"{type(exc).__name__}: {exc}"
        doc["traceback"] = traceback.format_exc()
    print(BEGIN, json.dumps(doc, sort_keys=True), END, sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
