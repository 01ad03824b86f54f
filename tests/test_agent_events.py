"""Issue 17: every family from one `watch`, wall-clock time, ECS/OCSF records checked against the
schemas' published definitions (tests/data/schemas), container identity from cgroup ids, the
example agent across a reload, `stats`, `select --kernel` what-ifs and `--btf`.

The fast tier (no root) checks every event type's mapping against the vendored schema subsets,
with records built from bpf/include/hids_events.h; the live tier runs the real bpf/ objects on
this kernel as root.
"""

# ruff: noqa: E402
from __future__ import annotations

import calendar
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import ROOT, write_manifest
from hids_bytecode import schema_map
from hids_bytecode.identity import Container, cgroup2_mount, container_of
from hids_bytecode.pins import PIN_ENV
from hids_bytecode.selection import Step, explain_lines
from hids_bytecode.stats import prometheus
from hids_bytecode.walltime import WallClock, rfc3339

pytestmark = pytest.mark.integration

SCHEMAS = ROOT / "tests" / "data" / "schemas"
ECS_FIELDS: dict[str, Any] = yaml.safe_load((SCHEMAS / "ecs" / "ecs_flat.subset.yml").read_text())
OCSF = SCHEMAS / "ocsf"
DICTIONARY = json.loads((OCSF / "dictionary.subset.json").read_text())
OCSF_ATTRS: dict[str, Any] = DICTIONARY["attributes"]
OCSF_TYPES: dict[str, Any] = DICTIONARY["types"]["attributes"]
# The 1.x base event's attributes this mapping uses (README.md: why base_event.json is not vendored).
OCSF_BASE = {"time", "metadata", "severity_id", "class_uid", "category_uid", "activity_id", "activity_name",
             "type_uid", "unmapped"}
RFC3339 = re.compile(OCSF_TYPES["datetime_t"]["regex"])
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF needs root")


# ----------------------------------------------------------------------------- schema checkers
def _flatten(doc: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _ecs_value_ok(kind: str, value: Any) -> bool:
    if kind in ("keyword", "wildcard", "match_only_text"):
        return isinstance(value, str)
    if kind == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "ip":
        return isinstance(value, str) and bool(ipaddress.ip_address(value))
    if kind == "date":
        return isinstance(value, str) and bool(RFC3339.match(value))
    raise AssertionError(f"the test knows no ECS type {kind!r}")


def check_ecs(doc: dict[str, Any]) -> None:
    """Every field (but the custom `hids.*` set) is an ECS field of the right type and shape;
    categorization values are allowed ones and each event.type is expected for a category."""
    assert isinstance(doc["hids"], dict) and doc["hids"]["schema_version"] == schema_map.SCHEMA_VERSION
    for name, value in _flatten({k: v for k, v in doc.items() if k != "hids"}):
        assert name in ECS_FIELDS, f"{name} is not an ECS field"
        spec = ECS_FIELDS[name]
        is_array = "array" in spec.get("normalize", [])
        assert isinstance(value, list) == is_array or (is_array and not isinstance(value, list)), name
        for item in value if isinstance(value, list) else [value]:
            assert _ecs_value_ok(spec["type"], item), f"{name}={item!r} is not an ECS {spec['type']}"
            if "pattern" in spec:
                assert re.match(spec["pattern"], item), (name, item)
    categories = {c["name"]: c for c in ECS_FIELDS["event.category"]["allowed_values"]}
    event = doc["event"]
    assert event["kind"] in {v["name"] for v in ECS_FIELDS["event.kind"]["allowed_values"]}
    assert set(event["category"]) <= categories.keys(), event
    expected = {t for c in event["category"] for t in categories[c]["expected_event_types"]}
    assert set(event["type"]) <= expected, f"{event['type']} not expected for {event['category']}"
    if "network" in doc and "direction" in doc["network"]:
        assert doc["network"]["direction"] in ECS_FIELDS["network.direction"]["expected_values"]


def _ocsf_class(class_uid: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    categories = json.loads((OCSF / "categories.json").read_text())["attributes"]
    for path in OCSF.glob("events/*/*_activity.json"):
        cls = json.loads(path.read_text())
        category = json.loads((path.parent / f"{cls['extends']}.json").read_text())
        uid = categories[category["category"]]["uid"]
        if uid * 1000 + cls["uid"] == class_uid:
            return cls, category, uid
    raise AssertionError(f"class_uid {class_uid} is none of the vendored classes")


def _ocsf_value_ok(type_name: str, value: Any) -> bool:
    base = OCSF_TYPES.get(type_name, {}).get("type", type_name)
    if type_name == "ip_t":
        return isinstance(value, str) and bool(ipaddress.ip_address(value))
    if type_name == "port_t":
        low, high = OCSF_TYPES["port_t"]["range"]
        return isinstance(value, int) and low <= value <= high
    if type_name == "datetime_t":
        return isinstance(value, str) and bool(RFC3339.match(value))
    if base in ("integer_t", "long_t"):
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "string_t":
        return isinstance(value, str)
    if type_name == "object":
        return isinstance(value, dict)
    raise AssertionError(f"the test knows no OCSF type {type_name!r}")


def _check_ocsf_node(path: str, name: str, value: Any) -> None:
    assert name in OCSF_ATTRS, f"{path}: {name} is not an OCSF dictionary attribute"
    spec = OCSF_ATTRS[name]
    items = value if spec.get("is_array") else [value]
    assert not spec.get("is_array") or isinstance(value, list), path
    for item in items:
        if isinstance(item, dict) and spec["type"] != "object":
            assert not spec["type"].endswith("_t"), f"{path} is an object but {name} is a {spec['type']}"
            for key, child in item.items():
                _check_ocsf_node(f"{path}.{key}", key, child)
            continue
        assert _ocsf_value_ok(spec["type"], item), f"{path}={item!r} is not an OCSF {spec['type']}"
        enum = spec.get("enum", {})
        if len(enum) > 2:  # a real enum, not just the generic Unknown/Other
            assert str(item) in enum, f"{path}={item} is not one of {sorted(enum)}"


def check_ocsf(doc: dict[str, Any]) -> None:
    """The class, category, activity and type ids agree with the class files; every top-level
    attribute belongs to the class, its category, the base event or a profile the record names;
    every attribute name and value type is the dictionary's."""
    cls, category, category_uid = _ocsf_class(doc["class_uid"])
    assert doc["category_uid"] == category_uid
    activity = doc["activity_id"]
    assert str(activity) in cls["attributes"]["activity_id"]["enum"] or str(activity) in \
        OCSF_ATTRS["activity_id"]["enum"], (cls["name"], activity)
    assert doc["type_uid"] == doc["class_uid"] * 100 + activity
    profiles = doc["metadata"]["profiles"]
    allowed = set(cls["attributes"]) | set(category["attributes"]) | OCSF_BASE
    for profile in profiles:
        allowed |= set(json.loads((OCSF / "profiles" / f"{profile}.json").read_text())["attributes"])
    for key, value in doc.items():
        if key.endswith("_dt") and "datetime" in profiles:  # the datetime profile's sibling of a timestamp_t
            assert OCSF_ATTRS[key[:-3]]["type"] == "timestamp_t" and _ocsf_value_ok("datetime_t", value), key
            continue
        assert key in allowed, f"{key} is not an attribute of {cls['name']} (or its category, base, profiles)"
        _check_ocsf_node(key, key, value)


# ------------------------------------------------------------------------------- fast tier
def _payload_fields() -> dict[str, list[tuple[str, str]]]:
    """(type, name) of each hids_ev_<name> member but the header, from the one event header."""
    text = (ROOT / "bpf" / "include" / "hids_events.h").read_text()
    out = {}
    for name, body in re.findall(r"struct hids_ev_(\w+) \{(.*?)\};", text, re.S):
        out[name] = re.findall(r"^\s*(?:__[us]\d+|char|enum \w+)\s+(?:(\w+)\s*(\[\w+\])?);", body, re.M)
        out[name] = [(member, bool(array)) for member, array in out[name] if member != "reserved"]
    return out


def _sample(name: str, members: list[tuple[str, bool]]) -> dict[str, Any]:
    """A raw record as the stream yields it, with plausible values of each member's kind."""
    record: dict[str, Any] = {"event": name, "hdr": {"type": 1, "flags": 0, "ts_ns": 5_000_000_000, "pid": 4243,
                                                     "tgid": 4242, "ppid": 1, "uid": 1000, "gid": 1000,
                                                     "cgroup_id": 7, "comm": "demo"},
                              "time": rfc3339(1_790_000_000_123_456_789), "time_ns": 1_790_000_000_123_456_789,
                              "program": "process", "schema_version": schema_map.SCHEMA_VERSION,
                              "host": {"name": "host-1"}, "container": {"id": "a" * 64, "runtime": "docker"}}
    for member, is_array in members:
        if member == "argv":
            record[member] = ["/bin/echo", "hi"]
        elif member.endswith("addr"):
            record[member] = "10.0.0.1"
        elif member == "family":
            record[member] = socket.AF_INET
        elif member == "protocol":
            record[member] = 6
        elif is_array or member in ("path", "oldpath", "newpath", "filename", "target", "source"):
            record[member] = f"/tmp/{member}"
        elif member in ("ruid", "euid", "suid", "rgid", "egid", "sgid", "uid", "gid"):
            record[member] = 0 if member.startswith("e") else -1
        else:
            record[member] = 3
    return record


def test_every_event_type_has_a_mapping_in_both_schemas() -> None:
    names = set(_payload_fields())
    assert names == set(schema_map.ECS) == set(schema_map.OCSF)


@pytest.mark.parametrize("name", sorted(_payload_fields()))
def test_mapping_of_each_event_matches_the_published_definitions(name: str) -> None:
    record = _sample(name, _payload_fields()[name])
    ecs, ocsf = schema_map.to_ecs(record), schema_map.to_ocsf(record)
    check_ecs(ecs)
    check_ocsf(ocsf)
    assert ecs["@timestamp"] == record["time"] and ecs["event"]["action"] == name
    assert ecs["container"] == {"id": "a" * 64, "runtime": "docker"} and ocsf["container"]["uid"] == "a" * 64
    assert ocsf["time"] == 1_790_000_000_123 and ocsf["device"]["hostname"] == "host-1"
    assert ecs["hids"]["data"] == ocsf["unmapped"]["data"] and "hdr" not in ecs["hids"]["data"]


def test_the_checkers_reject_what_the_schemas_do_not_define() -> None:
    record = _sample("open", _payload_fields()["open"])
    bad_field = {**schema_map.to_ecs(record), "process": {"pid": 1, "pidd": 2}}
    with pytest.raises(AssertionError, match="process.pidd is not an ECS field"):
        check_ecs(bad_field)
    bad_type = {**schema_map.to_ecs(record), "user": {"id": 1000}}
    with pytest.raises(AssertionError, match="not an ECS keyword"):
        check_ecs(bad_type)
    bad_pair = schema_map.to_ecs(record)
    bad_pair["event"]["type"] = ["connection"]
    with pytest.raises(AssertionError, match="not expected"):
        check_ecs(bad_pair)
    ocsf = schema_map.to_ocsf(record)
    with pytest.raises(AssertionError, match="not an attribute of file_activity"):
        check_ocsf({**ocsf, "src_endpoint": {"ip": "10.0.0.1"}})
    with pytest.raises(AssertionError, match="is not an OCSF port_t"):
        check_ocsf({**schema_map.to_ocsf(_sample("connect", _payload_fields()["connect"])),
                    "dst_endpoint": {"port": 70000}})


@pytest.mark.parametrize(("path", "expected"), [
    ("/system.slice/docker-" + "ab" * 32 + ".scope", Container("ab" * 32, "docker")),
    ("/docker/" + "cd" * 32, Container("cd" * 32, "docker")),
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-" + "0f" * 32 + ".scope",
     Container("0f" * 32, "containerd")),
    ("/kubepods.slice/kubepods-pod1.slice/crio-" + "12" * 32 + ".scope", Container("12" * 32, "cri-o")),
    ("/machine.slice/libpod-" + "34" * 32 + ".scope/container", Container("34" * 32, "podman")),
    ("/libpod_parent/libpod-" + "56" * 32, Container("56" * 32, "podman")),
    ("/kubepods/besteffort/pod0/" + "78" * 32, Container("78" * 32, None)),
    ("/user.slice/user-1000.slice/session-1.scope", None),
    ("/docker-" + "AB" * 32 + ".scope", None),  # not lower-case hex: not an id
    ("/docker-" + "ab" * 31 + ".scope", None),  # 62 digits
    ("/docker/" + "ab" * 32 + "/../etc", Container("ab" * 32, "docker")),  # components are names, not resolved
], ids=["docker-systemd", "docker-cgroupfs", "containerd", "cri-o", "podman", "podman-cgroupfs", "bare",
        "no-container", "upper-case", "short", "traversal-ish"])
def test_container_id_patterns(path: str, expected: Container | None) -> None:
    assert container_of(path) == expected


def test_package_stream_stays_the_function_once_the_stream_module_is_loaded() -> None:
    import hids_bytecode
    import hids_bytecode.eventstream  # noqa: F401  (a submodule import sets a package attribute)
    assert hids_bytecode.stream.__module__ == "hids_bytecode.api" and callable(hids_bytecode.stream)


def test_walltime_tracks_the_realtime_clock() -> None:
    clock = WallClock()
    # Two realtime reads bracket the monotonic one: a preemption between the reads widens the
    # bracket instead of counting as the conversion's error.
    before = time.clock_gettime_ns(time.CLOCK_REALTIME)
    converted = clock.wall_ns(WallClock.now_ktime_ns())
    after = time.clock_gettime_ns(time.CLOCK_REALTIME)
    assert before - 5_000_000 < converted < after + 5_000_000, (before, converted, after)  # 5 ms
    assert rfc3339(1_790_000_000_000_000_001) == "2026-09-21T14:13:20.000000001Z"  # date -u -d @1790000000


def test_explain_groups_other_releases_into_one_line_each() -> None:
    steps = [Step("exact", f"file/{rel}/w{w}d{d}", False, f"release {rel} != host 6.18.0")
             for rel in ("6.1.0-50-cloud-amd64", "6.12.117+deb13-cloud-amd64") for w in (0, 1) for d in (0, 1)]
    steps.append(Step("exact", "file/6.18.0/w0d0", False, "syscall_wrapper False != host True"))
    steps.append(Step("core", "file/core-x86_64/w1d0", True, "CO-RE object of the host arch; host has BTF"))
    lines = explain_lines(steps)
    assert lines[0] == ("skip exact    6.1.0-50-cloud-amd64 (4 builds: w0d0 w0d1 w1d0 w1d1): "
                        "release 6.1.0-50-cloud-amd64 != host 6.18.0")
    assert len(lines) == 4 and lines[2].startswith("skip exact    file/6.18.0/w0d0")
    assert len(explain_lines(steps, detail=True)) == len(steps)


def test_prometheus_text_format() -> None:
    text = prometheus({"file": {"open": {"emitted": 5, "dropped": 1}}, "network": {"connect": {"emitted": 2,
                                                                                                 "dropped": 0}}})
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*\{(?:[a-zA-Z_]\w*="(?:[^"\\\n]|\\.)*",?)*\} \d+$')
    lines = text.splitlines()
    assert text.endswith("\n")
    for line in lines:
        assert line.startswith(("# HELP ", "# TYPE ")) or sample.match(line), line
    assert 'hids_bytecode_events_emitted_total{program="file",type="open"} 5' in lines
    assert 'hids_bytecode_events_dropped_total{program="file",type="open"} 1' in lines
    assert "# TYPE hids_bytecode_events_dropped_total counter" in lines


# ------------------------------------------------------------------------------- live tier
@pytest.fixture()
def env(bpf_data: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    data, failed = bpf_data
    assert not failed, f"bpf/ programs failed to compile: {failed}"
    pins = f"/sys/fs/bpf/hids-test17-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("HIDS_BYTECODE_DATA", str(data))
    monkeypatch.setenv(PIN_ENV, pins)
    yield {**os.environ, "PYTHONPATH": str(ROOT / "loader")}
    if Path(pins).exists():
        subprocess.run([sys.executable, "-m", "hids_bytecode", "unload"], env={**os.environ, "PYTHONPATH":
                                                                               str(ROOT / "loader")})
    assert not Path(pins).exists(), "a test left pins behind"


def cli(env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hids_bytecode", *args], capture_output=True, text=True,
                          env=env, **kw)


class Lines:
    """A child's stdout, one parsed JSON line at a time, collected by a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.items = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.items.append(json.loads(line))

    def wait_for(self, match: Callable[[dict], bool], timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for item in self.items[seen:]:
                try:
                    if match(item):
                        return item
                except (KeyError, TypeError, AttributeError):  # another kind of record (a lost report)
                    pass
            seen = len(self.items)
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.05)
        lost = [i for i in self.items if i.get("event") == "lost"]
        raise AssertionError(f"no matching record among {len(self.items)} ({len(lost)} loss reports: {lost[:3]})")


def _start_watch(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen([sys.executable, "-m", "hids_bytecode", "watch", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = Lines(proc)
    marker = f"/tmp/hids-ready-{uuid.uuid4().hex}"
    stop = threading.Event()

    def poke() -> None:  # until the watch prints our marker, it is not reading yet
        while not stop.wait(0.2):
            subprocess.run(["/bin/ls", marker], capture_output=True)
    threading.Thread(target=poke, daemon=True).start()
    try:
        lines.wait_for(lambda e: marker in json.dumps(e), timeout=60)
    except AssertionError:
        proc.kill()
        raise AssertionError(f"watch never showed events: {proc.stderr.read()[-2000:]}") from None
    finally:
        stop.set()
    return proc, lines


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143, proc.stderr.read()[-2000:]


WORKLOAD = """
import json, os, socket, subprocess, sys, time
marker = sys.argv[1]
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
before_exec = time.time_ns()
child = subprocess.Popen(["/bin/cat", marker], stdout=subprocess.DEVNULL); child.wait()
after_exec = time.time_ns()
cli = socket.socket()
before_connect = time.time_ns(); cli.connect(srv.getsockname()); after_connect = time.time_ns()
print(json.dumps({"pid": os.getpid(), "child": child.pid, "port": srv.getsockname()[1],
                  "cport": cli.getsockname()[1], "exec": [before_exec, after_exec],
                  "connect": [before_connect, after_connect]}))
"""


def _workload(tmp: Path) -> tuple[dict[str, Any], Path]:
    marker = tmp / f"marker-{uuid.uuid4().hex}"
    marker.write_text("x")
    proc = subprocess.run([sys.executable, "-c", WORKLOAD, str(marker)], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout), marker


def _wall_ns(record: dict[str, Any], fmt: str) -> int:
    """The record's wall-clock time as written (RFC 3339 with nanoseconds), parsed back."""
    text = {"raw": record.get("time"), "ecs": record.get("@timestamp"), "ocsf": record.get("time_dt")}[fmt]
    head, frac = text.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) * 1_000_000_000 + int(frac.ljust(9, "0"))


def _within(ns: int, window: list[int], slack_ns: int = 50_000_000) -> bool:
    return window[0] - slack_ns <= ns <= window[1] + slack_ns


def _find(lines: Lines, fmt: str, work: dict[str, Any], marker: Path) -> tuple[dict, dict, dict]:
    """The workload's exec (of /bin/cat), open (of the marker, by cat) and connect, as `fmt` records."""
    if fmt == "raw":
        return (lines.wait_for(lambda e: e["event"] == "exec" and e["hdr"]["tgid"] == work["child"]),
                lines.wait_for(lambda e: e["event"] == "open" and e["path"] == str(marker)
                               and e["hdr"]["tgid"] == work["child"]),  # the test wrote the marker too
                lines.wait_for(lambda e: e["event"] == "connect" and e["hdr"]["tgid"] == work["pid"]))
    if fmt == "ecs":
        return (lines.wait_for(lambda e: e["event"]["action"] == "exec" and e["process"]["pid"] == work["child"]),
                lines.wait_for(lambda e: e["event"]["action"] == "open" and e["file"]["path"] == str(marker)
                               and e["process"]["pid"] == work["child"]),
                lines.wait_for(lambda e: e["event"]["action"] == "connect" and e["process"]["pid"] == work["pid"]))
    return (lines.wait_for(lambda e: e["type_uid"] == 100701 and e["process"]["pid"] == work["child"]
                           and "cmd_line" in e["process"]),
            lines.wait_for(lambda e: e["class_uid"] == 1001 and e["file"]["path"] == str(marker)
                           and e["actor"]["process"]["pid"] == work["child"]),
            lines.wait_for(lambda e: e["type_uid"] == 400101 and e["actor"]["process"]["pid"] == work["pid"]))


@needs_root
@pytest.mark.parametrize("fmt", ["raw", "ecs", "ocsf"])
def test_one_watch_shows_exec_open_and_connect_of_one_workload(env: dict[str, str], tmp_path: Path,
                                                                fmt: str) -> None:
    proc, lines = _start_watch(env, "--format", fmt)
    try:
        for attempt in range(3):
            work, marker = _workload(tmp_path)
            try:
                exec_ev, open_ev, conn_ev = _find(lines, fmt, work, marker)
                break
            except AssertionError:
                # A ring that filled up on this busy host drops events in-kernel; the stream must
                # have said so. Then the workload runs again; silence is a failure.
                if attempt == 2 or not any(item.get("event") == "lost" for item in lines.items):
                    raise
        if fmt == "raw":
            assert exec_ev["filename"] == "/bin/cat" and exec_ev["argv"] == ["/bin/cat", str(marker)]
            assert exec_ev["hdr"]["ppid"] == work["pid"] and exec_ev["program"] == "process"
            assert open_ev["program"] == "file" and open_ev["hdr"]["comm"] == "cat"
            assert (conn_ev["daddr"], conn_ev["dport"], conn_ev["sport"]) == ("127.0.0.1", work["port"], work["cport"])
            for ev in (exec_ev, open_ev, conn_ev):
                assert ev["schema_version"] == schema_map.SCHEMA_VERSION and ev["host"]["name"] == os.uname().nodename
                assert isinstance(ev["hdr"]["ts_ns"], int)  # the kernel's own timestamp stays
        elif fmt == "ecs":
            assert exec_ev["process"]["executable"] == "/bin/cat"
            assert exec_ev["process"]["args"] == ["/bin/cat", str(marker)] and exec_ev["process"]["args_count"] == 2
            assert exec_ev["process"]["parent"]["pid"] == work["pid"] and exec_ev["user"]["id"] == str(os.getuid())
            assert open_ev["file"]["name"] == marker.name and open_ev["event"]["category"] == ["file"]
            assert conn_ev["destination"] == {"ip": "127.0.0.1", "port": work["port"]}
            assert conn_ev["source"]["port"] == work["cport"] and conn_ev["network"]["transport"] == "tcp"
            for ev in (exec_ev, open_ev, conn_ev):
                check_ecs(ev)
                assert ev["host"]["name"] == os.uname().nodename
        else:
            assert exec_ev["process"]["file"]["path"] == "/bin/cat"
            assert exec_ev["process"]["cmd_line"] == f"/bin/cat {marker}"
            assert exec_ev["process"]["parent_process"]["pid"] == work["pid"] and open_ev["type_uid"] == 100114
            assert conn_ev["dst_endpoint"] == {"ip": "127.0.0.1", "port": work["port"]}
            assert conn_ev["connection_info"]["direction_id"] == 2
            for ev in (exec_ev, open_ev, conn_ev):
                check_ocsf(ev)
                assert ev["device"]["hostname"] == os.uname().nodename
                assert ev["metadata"]["log_version"] == schema_map.SCHEMA_VERSION
        assert _within(_wall_ns(exec_ev, fmt), work["exec"]), "exec timestamp off the wall clock by > 50 ms"
        assert _within(_wall_ns(open_ev, fmt), work["exec"]), "open timestamp off the wall clock by > 50 ms"
        assert _within(_wall_ns(conn_ev, fmt), work["connect"]), "connect timestamp off the wall clock by > 50 ms"
    finally:
        _stop(proc)


@needs_root
def test_a_process_in_a_container_cgroup_gets_the_container_id(env: dict[str, str], tmp_path: Path) -> None:
    root = cgroup2_mount()
    if root is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    top = Path(root) / f"hids-test17-{uuid.uuid4().hex[:8]}"
    cid_scope, cid_plain = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    scopes = {cid_scope: top / f"docker-{cid_scope}.scope", cid_plain: top / "docker" / cid_plain}
    for path in scopes.values():
        path.mkdir(parents=True)
    proc, lines = _start_watch(env, "process")
    try:
        for cid, path in scopes.items():
            marker = tmp_path / f"in-{cid[:8]}"
            subprocess.run(["/bin/sh", "-c", f'echo $$ > {path}/cgroup.procs && exec /bin/cat "$0"', str(marker)],
                           capture_output=True, check=False)
            ev = lines.wait_for(lambda e, m=str(marker): e["event"] == "exec" and e["filename"] == "/bin/cat"
                                and m in e["argv"])  # the sh before it, still outside, has it in argv too
            assert ev["container"] == {"id": cid, "runtime": "docker"}, ev
        host_ev = lines.wait_for(lambda e: e.get("event") == "exec" and e["filename"] == "/bin/ls")  # _start_watch's
        assert "container" not in host_ev
    finally:
        _stop(proc)
        for path in [*scopes.values(), top / "docker", top]:
            for _ in range(50):  # the moved process may still be exiting
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


@needs_root
def test_example_agent_survives_a_reload_and_holds_every_ring(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "events.ecs.jsonl"
    loaded = cli(env, "load", "file", "process")
    assert loaded.returncode == 0, loaded.stderr
    agent = subprocess.Popen([sys.executable, str(ROOT / "examples" / "ecs_agent.py"), "--output", str(out),
                              "file", "process"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        def seen(path: Path, timeout: float = 30) -> dict:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                subprocess.run(["/bin/cat", str(path)], capture_output=True)
                if out.exists():
                    for line in out.read_text().splitlines():
                        ev = json.loads(line)
                        if ev.get("file", {}).get("path") == str(path):
                            return ev
                time.sleep(0.3)
            raise AssertionError(f"{path} never reached the agent's file")

        first = tmp_path / "before-reload"
        first.write_text("x")
        check_ecs(seen(first))
        for program in ("file", "process"):  # one process holds both rings
            busy = cli(env, "watch", program)
            assert busy.returncode == 29 and f"pid {agent.pid}" in busy.stderr, busy.stderr
        stats = cli(env, "stats", "--prometheus")
        assert stats.returncode == 0, stats.stderr
        emitted = re.search(r'hids_bytecode_events_emitted_total\{program="file",type="open"\} (\d+)', stats.stdout)
        assert emitted and int(emitted.group(1)) > 0, stats.stdout
        assert json.loads(cli(env, "stats", "--json").stdout)["process"]["exec"]["emitted"] > 0

        assert cli(env, "unload", "file").returncode == 0
        assert cli(env, "load", "file").returncode == 0
        second = tmp_path / "after-reload"
        second.write_text("x")
        check_ecs(seen(second, timeout=40))
        assert agent.poll() is None, "the agent died across the reload"
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(timeout=30)
        err = agent.stderr.read()
        cli(env, "unload", "file", "process")
    assert rc == 0, err
    assert "reading file (pinned), process (pinned)" in err


# ------------------------------------------------------------------ select what-if and --btf
def _kernels() -> list[dict[str, str]]:
    return yaml.safe_load((ROOT / "kernels.yaml").read_text())["kernels"]


@pytest.fixture(scope="module")
def matrix_data(bpf_data: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real bpf/ objects, declared as the exact build of every kernels.yaml release and variant
    (the bytes are this host's CO-RE builds: selection picks entries, it does not load them here)."""
    src, _ = bpf_data
    dest = tmp_path_factory.mktemp("matrix") / "data"
    shutil.copytree(src, dest)
    base = json.loads((dest / "manifest.json").read_text())["objects"]
    entries = []
    for kernel in _kernels():
        for e in base:
            for wrapper in (True, False):
                for debug in (False, True):
                    entries.append({**e, "unit": f"{e['program']}/{kernel['release']}/w{int(wrapper)}d{int(debug)}",
                                    "kernel": {"release": kernel["release"], "arch": kernel["arch"],
                                               "version": kernel["version"]},
                                    "variant": {"syscall_wrapper": wrapper, "debug": debug}})
    write_manifest(dest, sorted(entries, key=lambda e: e["unit"]))
    return dest


@pytest.mark.parametrize("kernel", _kernels(), ids=lambda k: k["release"])
def test_select_kernel_picks_that_kernels_exact_object(matrix_data: Path, kernel: dict[str, str]) -> None:
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(matrix_data)}
    args = ["select", "--kernel", kernel["release"], "--arch", kernel["arch"]]
    proc = subprocess.run([sys.executable, "-m", "hids_bytecode", *args, "--json"], capture_output=True, text=True,
                          env=environ)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["facts"]["release"] == {"value": kernel["release"], "source": "--kernel"}
    assert not doc["refused"]
    for choice in doc["choices"]:
        assert choice["stage"] == "exact" and choice["unit"] == f"{choice['program']}/{kernel['release']}/w1d0"
    text = subprocess.run([sys.executable, "-m", "hids_bytecode", *args, "--explain"], capture_output=True,
                          text=True, env=environ).stdout
    others = [k["release"] for k in _kernels() if k["release"] != kernel["release"]]
    programs = len(doc["choices"])
    grouped = [line for line in text.splitlines() if line.strip().startswith("skip exact ") and "builds:" in line]
    earlier = sorted(others)[:sorted(k["release"] for k in _kernels()).index(kernel["release"])]
    assert len(grouped) == programs * len(earlier)  # candidates after the match are never tried
    assert "--kernel" in text and "derived from the version" in text


def test_select_what_if_flags_are_checked(matrix_data: Path) -> None:
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(matrix_data)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hids_bytecode", "select", *args], capture_output=True,
                              text=True, env=environ)
    lone = run("--arch", "aarch64")
    assert lone.returncode == 28 and "--kernel" in lone.stderr
    bad = run("--kernel", "not-a-release")
    assert bad.returncode == 12 and len(bad.stderr.splitlines()) == 1
    unknown = run("--kernel", "9.9.9-cloud-amd64", "--json")
    assert unknown.returncode == 16  # NoMatch: no exact build for it, and this manifest has no CO-RE build
    doc = json.loads(unknown.stdout)
    assert doc["choices"] == [] and {r["error"] for r in doc["refused"]} == {"NoMatch"}


@pytest.fixture(scope="module")
def core_data(bpf_data: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real bpf/ objects as CO-RE entries only (no exact build for any kernel)."""
    src, _ = bpf_data
    dest = tmp_path_factory.mktemp("core") / "data"
    shutil.copytree(src, dest)
    entries = [{**e, "kind": "core", "unit": f"{e['program']}/core-{e['kernel']['arch']}/w1d0",
                "kernel": {"release": None, "arch": e["kernel"]["arch"], "btf_from": e["kernel"]["release"]},
                "variant": {"syscall_wrapper": True, "debug": False}}
               for e in json.loads((dest / "manifest.json").read_text())["objects"]]
    write_manifest(dest, entries)
    return dest


@needs_root
def test_btf_file_selects_and_loads_core_on_a_host_without_kernel_btf(core_data: Path, tmp_path: Path) -> None:
    """In a mount namespace /sys/kernel/btf/vmlinux is covered by /dev/null: the host has no BTF.
    The kernel's own BTF copied to a file stands in for the BTF a headers/debug package ships."""
    if not Path("/sys/kernel/btf/vmlinux").is_file() or not shutil.which("unshare"):
        pytest.skip("needs /sys/kernel/btf/vmlinux and unshare")
    btf = tmp_path / "vmlinux.btf"
    shutil.copyfile("/sys/kernel/btf/vmlinux", btf)
    broken = tmp_path / "broken.btf"
    broken.write_bytes(btf.read_bytes()[:4096])
    pins = f"/sys/fs/bpf/hids-test17-btf-{os.getpid()}"
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(core_data),
               PIN_ENV: pins}

    def without_host_btf(*args: str) -> subprocess.CompletedProcess:
        script = 'mount --bind /dev/null /sys/kernel/btf/vmlinux && exec "$@"'
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                               sys.executable, "-m", "hids_bytecode", *args], capture_output=True, text=True,
                              env=environ)
    try:
        refused = without_host_btf("select", "file")
        assert refused.returncode == 15, refused.stdout + refused.stderr  # BtfUnavailable
        chosen = without_host_btf("select", "file", "--btf", str(btf), "--explain")
        assert chosen.returncode == 0, chosen.stderr
        assert "file: core file/core-" in chosen.stdout and f"{btf} present" in chosen.stdout
        loaded = without_host_btf("load", "file", "--btf", str(btf), "--json")
        assert loaded.returncode == 0, loaded.stderr
        report = json.loads(loaded.stdout)[0]
        assert report["stage"] == "core" and any(p["status"] == "attached" for p in report["programs"])
        assert subprocess.run([sys.executable, "-m", "hids_bytecode", "unload", "file"], env=environ).returncode == 0
        bad = without_host_btf("load", "file", "--btf", str(broken))
        assert bad.returncode == 19 and "Traceback" not in bad.stderr, bad.stderr  # libbpf read that file
    finally:
        subprocess.run([sys.executable, "-m", "hids_bytecode", "unload"], env=environ, capture_output=True)
    assert not Path(pins).exists()
