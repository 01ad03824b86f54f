"""Runs inside the verification VM, never on the build host: for every object built for the running
kernel and every CO-RE object of its arch, select it through the shipped loader, load it, attach
it, run the workloads of its program (workloads.py) and read every declared event kind back with
its fields checked; then detach, drain, and reconcile the in-kernel counters with the events read.

A program that did not attach is n/a only when the guest's own facts prove its hook absent (its
kprobe symbol missing from /proc/kallsyms, its tracepoint missing from tracefs). When the loader
attached a group's kprobes, its tracepoint alternatives would go unproved: so every hook outside
the kprobe type is then attached together (the path of a kernel without kprobes) and the
workload runs again, with the same checks (`tracepoint_pass` in the row).

Only the standard library and the installed `hids_bytecode` package are available here. The result
is one JSON document printed between markers on the serial console, which `vm.py` cuts out.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import workloads  # type: ignore[import-not-found]  # beside this file in the guest, not a package here
from hids_bytecode import libbpf as lb
from hids_bytecode.attach import load_object
from hids_bytecode.btf_layout import schema_from_btf
from hids_bytecode.errors import AttachError, HidsError, LoadError
from hids_bytecode.events import PERF_EVENT_ARRAY, RINGBUF, map_info, read_counters
from hids_bytecode.hostinfo import gather
from hids_bytecode.integrity import read_verified
from hids_bytecode.kallsyms import KALLSYMS, WrapperFact
from hids_bytecode.manifest import load_manifest
from hids_bytecode.mounts import TRACEFS, ensure_bpf_filesystems
from hids_bytecode.selection import select

BEGIN, END = "===HIDS-VERIFY-BEGIN===", "===HIDS-VERIFY-END==="
EVENT_WAIT_S = 20.0  # after the workload exited, for a declared kind still missing
QUIET_S = 1.5  # no new event for this long: the ring is drained
WORKLOAD_TIMEOUT_S = 180.0
WORKLOADS = Path(workloads.__file__)
MODULES = Path("/opt/hids/modules")  # one module of the guest's kernel, when the image package had one
# Programs without declared events (test probes) get the process workload: it execs and opens.
FALLBACK_PROGRAM = "process"


def _variant_facts(facts: Any, wrapper: bool) -> Any:
    """Host facts with the syscall wrapper overridden, so every variant can be selected here."""
    fake = WrapperFact(wrapper, facts.wrapper.prefix, "override by hids verify", 0, False)
    return facts.replace(wrapper=fake)


class Reader:
    """The object's `events` map polled from this thread, in bounded steps: the loader's iterator
    polls forever, and a check must stop, drain and close when it decides."""

    def __init__(self, lib: Any, events_fd: int, schema: Any) -> None:
        self.lib, self.schema, self.lost = lib, schema, 0
        self.events: list[dict[str, Any]] = []
        self._callbacks: tuple[Any, ...]
        kind = map_info(lib, events_fd).type
        if kind == RINGBUF:
            self._callbacks = (lb.RINGBUF_SAMPLE_FN(lambda _c, data, size: self._sample(data, size)),)
            self._buf = lib.ring_buffer__new(events_fd, self._callbacks[0], None, None)
            self._poll, self._free = lib.ring_buffer__poll, lib.ring_buffer__free
        elif kind == PERF_EVENT_ARRAY:
            self._callbacks = (lb.PERF_SAMPLE_FN(lambda _c, _cpu, data, size: self._sample(data, size)),
                               lb.PERF_LOST_FN(lambda _c, _cpu, count: self._lose(count)))
            self._buf = lib.perf_buffer__new(events_fd, 64, *self._callbacks, None, None)
            self._poll, self._free = lib.perf_buffer__poll, lib.perf_buffer__free
        else:
            raise HidsError(f"map `events` has type {kind}, expected RINGBUF or PERF_EVENT_ARRAY")
        if not self._buf:
            raise HidsError(f"cannot open the events buffer: {lb.errno_text()[1]}")

    def _sample(self, data: int, size: int) -> int:
        self.events.append(self.schema.decode(ctypes.string_at(data, size)))
        return 0  # the ring buffer's callback: go on

    def _lose(self, count: int) -> None:
        self.lost += count

    def poll(self, ms: int = 100) -> None:
        rc = self._poll(self._buf, ms)
        if rc < 0 and rc != -4:  # -EINTR
            raise HidsError(f"polling events failed: {self.lib.strerror(rc)}")

    def until_quiet(self, quiet: float, limit: float, done: Any = lambda: False) -> None:
        """Poll until `done()`, or no new event for `quiet` seconds, or `limit` seconds passed."""
        deadline, last, since = time.monotonic() + limit, len(self.events), time.monotonic()
        while time.monotonic() < deadline and not done():
            self.poll()
            if len(self.events) != last:
                last, since = len(self.events), time.monotonic()
            elif time.monotonic() - since > quiet:
                return

    def close(self) -> None:
        if self._buf:
            self._free(self._buf)
            self._buf = None


class HookFacts:
    """What this guest's kernel offers to hook, read once and only when an attach failed."""

    def __init__(self) -> None:
        self._symbols: set[str] | None = None

    def symbols(self) -> set[str]:
        if self._symbols is None:
            with KALLSYMS.open(errors="replace") as lines:
                self._symbols = {f[2] for f in (line.split() for line in lines) if len(f) > 2}
        return self._symbols

    def absent(self, section: str) -> str | None:
        """Why the hook of `section` cannot exist on this kernel, from its facts; None if it exists."""
        kind, _, target = section.partition("/")
        if kind in ("kprobe", "kretprobe"):
            if not (TRACEFS / "kprobe_events").exists():
                return f"the guest's kernel has no kprobes (no kprobe_events in its tracefs, {TRACEFS})"
            if target not in self.symbols():
                return f"{target} is not in the guest's {KALLSYMS}"
            return None
        if kind in ("tracepoint", "tp"):
            if not (TRACEFS / "events" / target).is_dir():
                return f"no tracepoint {target} in the guest's tracefs ({TRACEFS}/events/{target})"
            return None
        if kind in ("raw_tracepoint", "raw_tp"):
            if not any((TRACEFS / "events").glob(f"*/{target}")):
                return f"no tracepoint named {target} in the guest's tracefs ({TRACEFS}/events/*/{target})"
        return None


def _program_rows(reports: list[Any], hooks: HookFacts) -> list[dict[str, str]]:
    """Per program after the loader's attach: attached, pending (an alternative the loader passed
    over: the tracepoint pass decides it), n/a (its hook proven absent) or failed."""
    rows = []
    for report in reports:
        row = {"program": report.name, "section": report.section, "hook_type": report.hook_type,
               "status": report.status, "message": report.message, "proof": "failed", "pass": "loader"}
        if report.status == "attached":
            row["proof"] = "attached"
        elif report.status == "skipped" and report.hook_type != "kprobe":
            row["proof"] = "pending"
        else:
            why = hooks.absent(report.section)
            if why:
                row.update(status="n/a", proof="n/a", message=why)
        rows.append(row)
    return rows


def _attach_tracepoint_path(loaded: Any, rows: list[dict[str, str]], hooks: HookFacts) -> None:
    """Attach every hook outside the kprobe type: the path a kernel without kprobes runs,
    which holds each alternative the loader passed over."""
    for row in rows:
        if row["hook_type"] == "kprobe" or row["proof"] == "n/a":
            continue
        with lb.capture() as log:
            link = loaded.lib.bpf_program__attach(loaded.programs[row["program"]])
        if link:
            loaded.links[row["program"]] = link
            if row["proof"] == "pending":
                row.update(proof="attached", status="attached", message="", **{"pass": "tracepoint"})
            continue
        why = hooks.absent(row["section"])
        row.update(proof="n/a" if why else "failed", status="n/a" if why else "failed",
                   message=why or " ".join(text.strip() for _, text in log)[-300:] or lb.errno_text()[1],
                   **{"pass": "tracepoint"})
def _workload(program: str, unit: str) -> subprocess.Popen:
    """`program`'s workload started in its own process, to be polled while it runs."""
    work = f"/tmp/hids-work/{unit.replace('/', '_')}"
    module = next(iter(sorted(MODULES.glob("*.ko"))), None)
    cmd = [sys.executable, "-B", str(WORKLOADS), program, work] + ([str(module)] if module else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kind_checks(program: str | None, facts: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Each declared kind: ok when every expectation of it matched one event of the workload; n/a
    when the guest proved each of them impossible (the proofs under "n/a")."""
    checks: dict[str, Any] = {}
    for want in workloads.expectations(program, facts) if program else []:
        check = checks.setdefault(want.kind, {"status": "n/a", "count": 0, "expected": [], "got": []})
        if want.na:
            check.setdefault("n/a", []).append(want.na)
            continue
        hits = [e for e in events if want.matches(e)]
        mine = [e for e in events if e.get("event") == want.kind and e.get("hdr", {}).get("tgid") == want.tgid]
        check["count"] += len(hits)
        check["expected"].append(want.describe())
        if not hits:
            check["status"] = "fail"
            check["got"].extend({k: v for k, v in e.items() if k != "hdr"} for e in mine[:2])
        elif check["status"] == "n/a":
            check["status"] = "ok"
    return checks


def _reconcile(lib: Any, loaded: Any, schema: Any, reader: Reader, start: int,
               baseline: dict[str, dict[str, int]]) -> dict[str, Any]:
    """With every link gone and the ring drained, what `counters` gained since `baseline` must
    equal the events read since `start`, per type, with none lost."""
    for link in loaded.links.values():
        lib.bpf_link__destroy(link)
    loaded.links.clear()
    reader.until_quiet(0.6, 10.0)
    if "counters" not in loaded.maps:
        return {"status": "n/a", "reason": "the object has no counters map"}
    counted = read_counters(lib, loaded.map_fd("counters"), schema)
    read: dict[str, int] = {}
    for event in reader.events[start:]:
        read[event["event"]] = read.get(event["event"], 0) + 1

    def gained(field: str) -> dict[str, int]:
        delta = {k: c.get(field, 0) - baseline.get(k, {}).get(field, 0) for k, c in counted.items()}
        return {k: v for k, v in delta.items() if v}

    emitted, dropped = gained("emitted"), gained("dropped")
    ok = emitted == read and not reader.lost
    return {"status": "ok" if ok else "fail", "emitted": emitted, "read": read, "dropped": dropped,
            "lost": reader.lost}


def _pass(loaded: Any, lib: Any, schema: Any, reader: Reader, entry: Any, name: str, start: int,
          baseline: dict[str, dict[str, int]]) -> dict[str, Any]:
    """One run of the object's workload over the links attached now: the workload's events by kind,
    each declared kind checked on its fields, then the counters reconciled (which detaches).
    `start` and `baseline` are the events read and the counters as they stood before the links."""
    declared = entry.program if entry.program in workloads.DECLARED else None
    result: dict[str, Any] = {"events": {}, "kinds": {}, "counters": {}, "workload": {}, "timing": {}, "error": ""}
    mark = time.monotonic()
    proc = _workload(declared or FALLBACK_PROGRAM, f"{entry.unit}/{name}")
    deadline = time.monotonic() + WORKLOAD_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        reader.poll()
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    result["timing"]["workload"], mark = round(time.monotonic() - mark, 1), time.monotonic()
    if proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        result["error"] = f"workload {declared or FALLBACK_PROGRAM} failed: {tail}"
        return result
    facts = json.loads(out)
    result["workload"] = {k: v for k, v in facts.items() if k.startswith(("module", "oom", "v6"))}
    pids = set(facts["pids"])
    # A kind is awaited unless each of its expectations is n/a in this guest.
    possible = {w.kind for w in workloads.expectations(declared, facts) if not w.na} if declared else set()
    wanted = {k for k in workloads.DECLARED.get(entry.program, ()) if k in possible}

    def proved() -> bool:
        return wanted <= {e["event"] for e in reader.events[start:] if e.get("hdr", {}).get("tgid") in pids}

    reader.until_quiet(QUIET_S, EVENT_WAIT_S, proved)
    result["timing"]["read"], mark = round(time.monotonic() - mark, 1), time.monotonic()
    result["counters"] = _reconcile(lib, loaded, schema, reader, start, baseline)  # drains: every event is in
    result["timing"]["reconcile"] = round(time.monotonic() - mark, 1)
    mine = [e for e in reader.events[start:] if e.get("hdr", {}).get("tgid") in pids]
    for event in mine:
        result["events"][event["event"]] = result["events"].get(event["event"], 0) + 1
    result["kinds"] = _kind_checks(declared, facts, mine)
    bad = [k for k, c in result["kinds"].items() if c["status"] == "fail"]
    if bad:
        result["error"] = f"not proved: {', '.join(bad)}"
    elif declared and result["counters"]["status"] == "fail":
        result["error"] = f"counters do not reconcile: {result['counters']}"
    elif not declared and not result["events"]:
        result["error"] = f"no event of the workload within {EVENT_WAIT_S:.0f}s"
    return result


def _exercise(loaded: Any, lib: Any, entry: Any, row: dict[str, Any], hooks: HookFacts) -> None:
    """The loader's attach, checked; then, when it passed over alternatives, the tracepoint path."""
    if "events" not in loaded.maps:
        row["error"] = f"{entry.unit} has no `events` map (docs/DESIGN.md)"
        return
    schema = schema_from_btf(lib, lib.bpf_object__btf(loaded.obj))
    reader = Reader(lib, loaded.map_fd("events"), schema)
    try:
        first = _pass(loaded, lib, schema, reader, entry, "loader", 0, {})  # a fresh object counts from zero
        row.update(events=first["events"], kinds=first["kinds"], counters=first["counters"],
                   workload=first["workload"])
        row["timing"].update(first["timing"])
        errors = [first["error"]] if first["error"] else []
        if any(p["proof"] == "pending" for p in row["programs"]):
            # Read with nothing attached and the ring drained: the second pass starts from here.
            baseline = read_counters(lib, loaded.map_fd("counters"), schema) if "counters" in loaded.maps else {}
            start = len(reader.events)
            _attach_tracepoint_path(loaded, row["programs"], hooks)
            second = (_pass(loaded, lib, schema, reader, entry, "tracepoint", start, baseline) if loaded.links
                      else {"error": "nothing attached"})
            row["tracepoint_pass"] = second
            if second["error"]:
                errors.append(f"tracepoint path: {second['error']}")
        row["event"] = "fail" if errors else "ok"
        row["error"] = row["error"] or "; ".join(errors)
    finally:
        reader.close()


def _new_row(entry: Any) -> dict[str, Any]:
    return {"unit": entry.unit, "program": entry.program, "kind": entry.kind, "variant": entry.raw["variant"],
            "select": "not run", "load": "not run", "attach": "not run", "event": "not run", "programs": [],
            "events": {}, "kinds": {}, "counters": {}, "tracepoint_pass": {}, "workload": {}, "error": "",
            "verifier_log": "", "timing": {}}


def _check(entry: Any, facts: Any, manifest: Any, hooks: HookFacts) -> dict[str, Any]:
    row = _new_row(entry)
    # CO-RE is what a host without an exact build gets: selected from the CO-RE entries alone.
    pool = manifest if entry.kind == "exact" else manifest.replace(
        entries=tuple(e for e in manifest.entries if e.kind == "core"))
    try:
        choice = select(pool, _variant_facts(facts, entry.wrapper), entry.program, debug=entry.debug,
                        strict=entry.kind == "exact")
    except HidsError as exc:
        row.update(select="fail", error=f"selection: {exc}")
        return row
    if choice.entry.unit != entry.unit:
        row.update(select="fail", error=f"selection picked {choice.entry.unit}")
        return row
    row["select"] = "ok"
    lib = lb.get()
    data = read_verified(entry.object_path, entry.sha256)
    mark = time.monotonic()
    # The loader's own load path, as `hids-bytecode load` runs it, unpinned: a pinned link would
    # outlive the detach the counters are reconciled after. This process is the agent: its own
    # events are dropped in-kernel, the workloads' (its children) are not.
    try:
        loaded = load_object(lib, data, entry.unit, agent_tgid=os.getpid())
    except LoadError as exc:  # open, verifier, agent tgid: libbpf's whole output comes with it
        row.update(load="fail", error=str(exc), verifier_log=exc.log)
        return row
    except AttachError as exc:  # loaded, but no program attached (the object is closed again)
        row.update(load="ok", attach="fail", error=str(exc))
        return row
    row["load"] = "ok"
    row["timing"]["load+attach"] = round(time.monotonic() - mark, 1)
    with loaded:
        row["programs"] = _program_rows(loaded.reports, hooks)
        _exercise(loaded, lib, entry, row, hooks)
        failed = [p for p in row["programs"] if p["proof"] not in ("attached", "n/a")]
        row["attach"] = "fail" if failed else "ok"
        if failed:
            why = f"{failed[0]['program']}: {failed[0]['message'] or failed[0]['status']}"
            row["error"] = "; ".join(e for e in (why, row["error"]) if e)
    return row


def main() -> int:
    doc: dict[str, Any] = {"uname": os.uname().release, "machine": os.uname().machine, "rows": [], "error": ""}
    try:
        ensure_bpf_filesystems()
        facts = gather()
        manifest = load_manifest()
        doc["btf"] = facts.btf
        doc["module"] = [p.name for p in sorted(MODULES.glob("*.ko"))]
        entries = [e for e in manifest.entries if e.arch == facts.arch
                   and (e.kind == "core" or (e.kind == "exact" and e.release == facts.release))]
        hooks = HookFacts()
        for entry in sorted(entries, key=lambda e: (e.kind != "exact", e.unit)):
            print(f"hids-verify: {entry.unit}", flush=True)
            started = time.monotonic()
            try:
                row = _check(entry, facts, manifest, hooks)
            except Exception as exc:  # one broken object must not hide the others' results
                row = _new_row(entry)
                row.update(event="fail", error=f"the check broke: {type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc())
            row["seconds"] = round(time.monotonic() - started, 1)
            doc["rows"].append(row)
    except Exception as exc:  # the host must always get a document, whatever broke in here
        doc["error"] = f"{type(exc).__name__}: {exc}"
        doc["traceback"] = traceback.format_exc()
    print(BEGIN, json.dumps(doc, sort_keys=True), END, sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
