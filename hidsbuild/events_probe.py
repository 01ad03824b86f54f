"""Event-path measurements, run by `invoke bench --only events` under the loader's own interpreter
(a venv with the wheel installed), never imported by hidsbuild.

    python events_probe.py MODE LOADGEN [SECONDS [RATE [READER]]]   -> one JSON object on stdout

MODE `api`: this process streams the file family (hids_bytecode.stream, raw, no merge window) on
CPU 0 while LOADGEN opens on CPU 1 at RATE/s (0: as fast as it can). MODE `watch`: `hids-bytecode
watch file --window-ms 0` on CPU 0 writes JSON lines into a pipe this process reads on CPU 1.
Reported: events decoded (every process's, the generator's counted apart and checked for gaps),
the consumer's CPU seconds, and what was lost (the kernel's dropped counters and loss records).
MODE `profile`: where a record's CPU time goes, on full rings (filled while the reader waits):
reading the ring alone, plus decoding, plus the stream's enrichment and merge (the whole path).
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

PREFIX = "/nonexistent-hids-load/"


def _generator(loadgen: str, rate: int, seconds: float, tag: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["taskset", "-c", "1", loadgen, str(rate), str(seconds), tag], stdout=subprocess.PIPE,
                            text=True)


def _opens(gen: subprocess.Popen[str]) -> int:
    out, _ = gen.communicate()
    return int(out.split()[1])


def _ours(paths: list[str], tag: str) -> dict[str, Any]:
    mine = f"{PREFIX}{tag}/"
    seq = [int(p[len(mine):]) for p in paths if p.startswith(mine)]
    return {"ours": len(seq), "ours_in_order": seq == sorted(seq), "ours_distinct": len(set(seq))}


def api(loadgen: str, seconds: float, rate: int, reader: str) -> dict[str, Any]:
    from hids_bytecode import api as loader

    os.sched_setaffinity(0, {0})
    tag = uuid.uuid4().hex[:8]
    paths: list[str] = []
    decoded = 0
    with loader.stream(["file"], "raw", window_ms=0, reader=reader) as events:
        events.poll(0)
        events.drain()
        gen = _generator(loadgen, rate, seconds, tag)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while gen.poll() is None:
            events.poll(5)
            batch = events.drain()
            decoded += len(batch)
            paths += [e["path"] for e in batch if e.get("event") == "open" and e["path"].startswith(PREFIX)]
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        for _ in range(3):  # what the generator's last burst left in the ring
            events.poll(20)
            batch = events.drain()
            decoded += len(batch)
            paths += [e["path"] for e in batch if e.get("event") == "open" and e["path"].startswith(PREFIX)]
        time.sleep(1.1)
        events.poll(0)  # housekeeping: the kernel's dropped counters
        dropped = sum(c.get("dropped", 0) for c in events.counters().get("file", {}).values())
        lost = sum(events.lost.values())
    return {"mode": "api", "reader": reader, "rate": rate, "opens": _opens(gen), "decoded": decoded,
            "cpu_s": cpu, "wall_s": wall, "dropped": dropped, "lost_reported": lost, **_ours(paths, tag)}


def _cpu_s(pid: int) -> float:
    """utime + stime of a running process, from /proc (its start-up excluded by taking a delta)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch(loadgen: str, seconds: float, rate: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "hids_bytecode", "watch", "file",
                             "--window-ms", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    start_marker = f"{PREFIX}{tag}/".encode()
    # Until watch prints events it is not reading yet: open a marker until one comes back.
    deadline = time.monotonic() + 60
    while not select.select([fd], [], [], 0.2)[0]:
        subprocess.run(["/bin/cat", PREFIX + "ready"], capture_output=True)
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"watch printed nothing: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
    os.read(fd, 1 << 20)
    gen = _generator(loadgen, rate, seconds, tag)
    lines = ours = lost = 0
    wall0, cpu0 = time.perf_counter(), _cpu_s(proc.pid)
    while gen.poll() is None:
        chunk = os.read(fd, 1 << 20)
        lines += chunk.count(b"\n")
        ours += chunk.count(start_marker)
        lost += chunk.count(b'"event": "lost"')
    wall = time.perf_counter() - wall0
    os.set_blocking(fd, False)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        lines += chunk.count(b"\n")
        ours += chunk.count(start_marker)
        lost += chunk.count(b'"event": "lost"')
    cpu = _cpu_s(proc.pid) - cpu0  # the backlog it wrote after the generator stopped included
    proc.send_signal(signal.SIGTERM)
    _, status = os.waitpid(proc.pid, 0)
    return {"mode": "watch", "rate": rate, "opens": _opens(gen), "lines": lines, "ours": ours, "loss_lines": lost,
            "cpu_s": cpu, "wall_s": wall, "exit": os.waitstatus_to_exitcode(status)}


def profile(loadgen: str, rounds: int = 30) -> dict[str, Any]:
    """Microseconds of consumer CPU per record for each stage, on rings filled by `loadgen`."""
    from hids_bytecode import api as loader

    os.sched_setaffinity(0, {0})
    out: dict[str, Any] = {"mode": "profile"}
    with loader.stream(["file"], "raw", window_ms=0, reader="mmap") as events:
        events.poll(0)
        events.drain()
        rings = list(events._rings)  # the bench looks inside: one stage at a time
        decode_at = events._sources["file"].schema.decode_at  # type: ignore[union-attr]
        counted = [0]

        def read_only(_buf: Any, _off: int, _n: int) -> None:
            counted[0] += 1

        def decode(buf: Any, off: int, n: int) -> None:
            decode_at(buf, off, n)
            counted[0] += 1

        for stage, accept in (("read_us", read_only), ("read_decode_us", decode), ("whole_path_us", None)):
            events._rings = [(ring, accept or own) for ring, own in rings]
            cpu, records = 0.0, 0
            for _ in range(rounds):
                subprocess.run(["taskset", "-c", "1", loadgen, "0", "0.02", "profile"], capture_output=True)
                counted[0] = 0
                start = time.process_time()
                events.poll(0)
                records += len(events.drain()) if accept is None else counted[0]
                cpu += time.process_time() - start
            out[stage] = cpu / max(records, 1) * 1e6
            out[f"{stage[:-3]}_records"] = records
        events._rings = rings
    with loader.stream(["file"], "raw", window_ms=0, reader="libbpf") as events:  # the old path, for comparison
        events.poll(0)
        events.drain()
        cpu, records = 0.0, 0
        for _ in range(rounds):
            subprocess.run(["taskset", "-c", "1", loadgen, "0", "0.02", "profile"], capture_output=True)
            start = time.process_time()
            while True:  # libbpf's round stops at the budget too: read the whole ring as above
                events.poll(0)
                batch = events.drain()
                records += len(batch)
                if len(batch) < 100:
                    break
            cpu += time.process_time() - start
        out["libbpf_whole_path_us"] = cpu / max(records, 1) * 1e6
    return out


def main() -> None:
    mode, loadgen = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    rate = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if mode == "api":
        result = api(loadgen, seconds, rate, sys.argv[5] if len(sys.argv) > 5 else "auto")
    elif mode == "watch":
        result = watch(loadgen, seconds, rate)
    else:
        result = profile(loadgen)
    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result))


if __name__ == "__main__":
    main()
