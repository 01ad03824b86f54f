"""Event-path measurements, run by `invoke bench --only events` under the loader's own interpreter
(a venv with the wheel installed), never imported by hidsbuild.

    python events_probe.py MODE LOADGEN [SECONDS [RATE [READER]]]   -> one JSON object on stdout

MODE `api`: this process streams the file family (hids_bytecode.stream, raw, no merge window) on
CPU 0 while LOADGEN opens on CPU 1 at RATE/s (0: as fast as it can). MODE `watch`: `hids-bytecode
watch file --window-ms 0` on CPU 0 writes JSON lines into a pipe this process reads on CPU 1.
Reported: events decoded (every process's, the generator's counted apart and checked for gaps),
the consumer's CPU seconds (all of it, and the part spent in the API: poll, drain and freeing the
records, without this probe's own checks), and what was lost (the kernel's dropped counters and loss records).
MODE `profile`: where a record's CPU time goes, on full rings (filled while the reader waits):
reading the ring alone, plus unpacking, the API's whole path, with json.dumps, watch's lines, and
those written to a pipe (see profile()).
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
        api_cpu = 0.0  # in the API: poll, drain, and freeing what it returned; not this probe's checks
        while gen.poll() is None:
            start = time.process_time()
            events.poll(5)
            batch = events.drain()
            api_cpu += time.process_time() - start
            decoded += len(batch)
            paths += [e["path"] for e in batch if e.get("event") == "open" and e["path"].startswith(PREFIX)]
            start = time.process_time()
            del batch
            api_cpu += time.process_time() - start
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
            "cpu_s": cpu, "api_cpu_s": api_cpu, "wall_s": wall, "dropped": dropped, "lost_reported": lost,
            **_ours(paths, tag)}


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
    # Other processes' events keep coming: watch may be blocked writing a batch into the full pipe,
    # and it acts on the signal only once the batch is written. Read to the end (its exit).
    os.set_blocking(fd, True)
    while os.read(fd, 1 << 20):
        pass
    _, status = os.waitpid(proc.pid, 0)
    return {"mode": "watch", "rate": rate, "opens": _opens(gen), "lines": lines, "ours": ours, "loss_lines": lost,
            "cpu_s": cpu, "wall_s": wall, "exit": os.waitstatus_to_exitcode(status)}


def _fill(loadgen: str) -> None:
    """20 ms of unpaced opens: a few thousand records, more than a round's budget."""
    subprocess.run(["taskset", "-c", "1", loadgen, "0", "0.02", "profile"], capture_output=True)


class _Runs(dict[tuple[int, int], Any]):
    """Stands in for the stream's runs (ringbuf.py): counts the records of each run, after
    unpacking them when `unpack`, and builds nothing."""

    def __init__(self, schema: Any, counted: list[int], unpack: bool) -> None:
        super().__init__()
        self.schema, self.counted, self.unpack = schema, counted, unpack

    def __missing__(self, key: tuple[int, int]) -> Any:
        layout = self.schema.events.get(key[0])
        take = None
        if layout is not None and layout.batches is not None and key[1] >= layout.size:
            stride = (key[1] + 15) & ~7
            rows = layout.batches.row_struct(stride).iter_unpack
            counted, unpack = self.counted, self.unpack

            def take(view: memoryview) -> None:
                counted[0] += len(list(rows(view))) if unpack else len(view) // stride
        self[key] = take
        return take


def profile(loadgen: str, rounds: int = 30) -> dict[str, Any]:
    """Microseconds of consumer CPU per record, cumulative stages on rings filled by `loadgen`:
    the ring walk alone, plus unpacking each run (struct.iter_unpack), the API's whole path
    (records as dicts, merged, drained), the same plus json.dumps of each (what watch did), the
    whole path of watch's JSON lines (drain_lines: compiled templates, no dicts), and those lines
    written to a pipe as watch writes them."""
    from hids_bytecode import api as loader
    from hids_bytecode.cli import _write_lines as write_lines  # watch's own write: PIPE_BUF pieces

    os.sched_setaffinity(0, {0})
    out: dict[str, Any] = {"mode": "profile"}
    encode = json.JSONEncoder(sort_keys=True).encode
    sink = subprocess.Popen(["taskset", "-c", "1", "cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert sink.stdin is not None
    pipe = sink.stdin
    with loader.stream(["file"], "raw", window_ms=0, reader="mmap") as events:
        events.poll(0)
        events.drain()
        rings = list(events._rings)  # the bench looks inside: one stage at a time
        schema = events._sources["file"].schema
        counted = [0]

        def count(_buf: Any, _off: int, _n: int) -> None:
            counted[0] += 1

        def fake(unpack: bool) -> int:
            counted[0] = 0
            events.poll(0)
            return counted[0]

        def records() -> int:
            events.poll(0)
            return len(events.drain())

        def dumped() -> int:
            events.poll(0)
            batch = events.drain()
            "".join([encode(event) + "\n" for event in batch])
            return len(batch)

        def lines() -> int:
            events.poll(0)
            return len(events.drain_lines())

        def written() -> int:
            events.poll(0)
            batch = events.drain_lines()
            write_lines(pipe.fileno(), "".join(batch).encode())
            return len(batch)

        stages: list[tuple[str, Any, bool | None]] = [("read_us", fake, False), ("unpack_us", fake, True),
                                                      ("records_us", records, None), ("records_json_us", dumped, None),
                                                      ("lines_us", lines, None), ("lines_written_us", written, None)]
        for stage, step, unpack in stages:  # lines last: from drain_lines on, the stream makes lines
            fakes: Any = [(ring, count, _Runs(schema, counted, bool(unpack))) for ring, _, _ in rings]
            events._rings = rings if unpack is None else fakes
            cpu, taken = 0.0, 0
            for _ in range(rounds):
                _fill(loadgen)
                start = time.process_time()
                while True:  # a round stops at the budget: read the whole ring
                    n = step(unpack) if unpack is not None else step()
                    taken += n
                    if n < 100:
                        break
                cpu += time.process_time() - start
            out[stage] = cpu / max(taken, 1) * 1e6
            out[f"{stage[:-3]}_records"] = taken
        events._rings = rings
    pipe.close()
    sink.wait()
    with loader.stream(["file"], "raw", window_ms=0, reader="libbpf") as events:  # the libbpf path, for comparison
        events.poll(0)
        events.drain()
        cpu, taken = 0.0, 0
        for _ in range(rounds):
            _fill(loadgen)
            start = time.process_time()
            while True:
                n = records()
                taken += n
                if n < 100:
                    break
            cpu += time.process_time() - start
        out["libbpf_records_us"] = cpu / max(taken, 1) * 1e6
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
