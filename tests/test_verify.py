"""`invoke verify` in real VMs: real Debian kernel images under qemu TCG, the real wheel from
`invoke bundle`, the real loader and libbpf inside the guest.

The objects are the loader tests' mini probe (tests/data/loader/mini_hids.bpf.c), compiled CO-RE
with the host's clang and entered in a build directory as exact builds of the target kernels: this
keeps the test independent of the bpf/ programs in progress while every step after the compile
(bundle, image fetch, boot, select, verifier, attach, events) is the real one. Four boots in all:
two kernels of different series that pass, one kernel given an object the verifier rejects, and one
stopped by the per-VM timeout before its /init runs.
Kernel images and the guest base archive are cached under .cache/tests, like the headers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, SHARED_CACHE
from conftest_loader import MINI_SOURCE, compile_core

KERNELS = {  # release -> (suite, version): two series from the default kernels.yaml
    "6.1.0-50-cloud-amd64": ("bookworm", "6.1.176-1"),
    "6.12.117+deb13-cloud-amd64": ("trixie", "6.12.117-1"),
}
REJECTED_ON = "6.1.0-50-cloud-amd64"


def _invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args],
                          capture_output=True, text=True, cwd=ROOT)


def _matrix(dest: Path) -> Path:
    source = dest / "bpf" / "mini.bpf.c"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(MINI_SOURCE.read_bytes())
    doc = {"toolchain": {"suite": "bookworm", "clang": 19}, "programs": {"mini": {"source": "bpf/mini.bpf.c"}},
           "variants": {"syscall_wrapper": [True, False], "debug": [False, True]},
           "kernels": [{"release": r, "arch": "x86_64", "suite": s, "version": v} for r, (s, v) in KERNELS.items()]}
    path = dest / "kernels.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _entry(release: str, wrapper: bool, data: bytes, source: bytes) -> dict[str, Any]:
    from hids_bytecode.elfinfo import inventory  # the loader refuses an object whose inventory differs

    sha, source_sha = hashlib.sha256(data).hexdigest(), hashlib.sha256(source).hexdigest()
    suite, version = KERNELS[release]
    found = inventory(data)
    return {
        "unit": f"mini/{release}/w{int(wrapper)}d0", "program": "mini", "kind": "exact",
        "kernel": {"release": release, "version": version.split("-")[0], "arch": "x86_64", "distro": "debian",
                   "flavour": "cloud-amd64", "package_version": version},
        "variant": {"syscall_wrapper": wrapper, "debug": False},
        "object": f"objects/{sha}.o", "sha256": sha, "size": len(data),
        "programs": [{"name": n, "section": s, "type": s.split("/", 1)[0]} for n, s in found.programs],
        "maps": sorted(found.maps), "toolchain": {"clang": "host", "image": "none"},
        "source": {"path": f"sources/mini-{source_sha[:16]}.c", "sha256": source_sha}, "cflags": [],
    }


def _wheel(tmp: Path, objects: dict[str, bytes]) -> Path:
    """dist/ with the real bundled wheel of a build dir holding `objects` (release -> object) in both
    syscall-wrapper variants."""
    build, dist = tmp / "build", tmp / "dist"
    source = MINI_SOURCE.read_bytes()
    entries = [_entry(r, w, data, source) for r, data in objects.items() for w in (True, False)]
    for e in entries:
        for rel, blob in ((e["object"], objects[e["kernel"]["release"]]), (e["source"]["path"], source)):
            (build / rel).parent.mkdir(parents=True, exist_ok=True)
            (build / rel).write_bytes(blob)
    (build / "index.json").write_text(json.dumps({"schema": 1, "units": entries, "failures": []}))
    proc = _invoke("bundle", "--build-dir", str(build), "--dist", str(dist))
    assert proc.returncode == 0, proc.stderr
    return dist


@pytest.fixture(scope="session")
def verify_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _matrix(tmp_path_factory.mktemp("verify-project"))


@pytest.fixture(scope="session")
def mini_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("verify-objects")
    return {"good": compile_core(MINI_SOURCE, work),
            "rejected": compile_core(MINI_SOURCE, work, "-DHIDS_TEST_UNCHECKED_LOOKUP")}


def _verify(matrix: Path, dist: Path, *releases: str, timeout: int = 400) -> subprocess.CompletedProcess:
    args = [a for r in releases for a in ("--kernel", r)]
    return _invoke("verify", "--matrix", str(matrix), "--dist", str(dist), "--cache-dir", str(SHARED_CACHE),
                   "--timeout", str(timeout), *args)


def test_two_kernel_series_pass(verify_project: Path, mini_objects: dict[str, bytes], tmp_path: Path) -> None:
    dist = _wheel(tmp_path, {r: mini_objects["good"] for r in KERNELS})
    proc = _verify(verify_project, dist, *KERNELS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((dist / "verify.json").read_text())
    assert doc["ok"] is True
    assert [k["release"] for k in doc["kernels"]] == list(KERNELS)
    for kernel in doc["kernels"]:
        assert kernel["status"] == "ok" and kernel["uname"] == kernel["release"]
        assert sorted(r["unit"] for r in kernel["rows"]) == [f"mini/{kernel['release']}/w{w}d0" for w in (0, 1)]
        for row in kernel["rows"]:
            assert (row["select"], row["load"], row["attach"], row["event"]) == ("ok", "ok", "ok", "ok"), row
            # The trigger child execs python3 and opens /etc/hostname; mini has no connect hook.
            assert row["events"].get("exec", 0) >= 1 and row["events"].get("open", 0) >= 1, row
            assert {p["status"] for p in row["programs"]} <= {"attached", "skipped"}, row["programs"]
    text = (dist / "verify.txt").read_text()
    assert all(release in text for release in KERNELS)


def test_rejected_object_reported_with_verifier_message(verify_project: Path, mini_objects: dict[str, bytes],
                                                        tmp_path: Path) -> None:
    dist = _wheel(tmp_path, {REJECTED_ON: mini_objects["rejected"]})
    proc = _verify(verify_project, dist, REJECTED_ON)
    assert proc.returncode == 7, proc.stderr[-4000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 kernel(s) failed verification")
    (kernel,) = json.loads((dist / "verify.json").read_text())["kernels"]
    assert kernel["status"] == "failed" and kernel["uname"] == REJECTED_ON
    for row in kernel["rows"]:
        assert row["select"] == "ok" and row["load"] == "fail" and row["attach"] == "not run"
        assert "rejected by the verifier" in row["error"]
        # The kernel's own complaint about the out-of-bounds read of the config value.
        assert "invalid access to map value" in row["verifier_log"]
    assert "invalid access to map value" in (dist / "verify.txt").read_text()


def test_kernel_that_does_not_come_up_is_reported(verify_project: Path, mini_objects: dict[str, bytes],
                                                  tmp_path: Path) -> None:
    # One second is far below any TCG boot of a Debian kernel (the guest's /init starts after ~10 s),
    # so the VM is stopped by the per-VM timeout before its checks report.
    dist = _wheel(tmp_path, {REJECTED_ON: mini_objects["good"]})
    proc = _verify(verify_project, dist, REJECTED_ON, timeout=1)
    assert proc.returncode == 7, proc.stderr[-4000:]
    (kernel,) = json.loads((dist / "verify.json").read_text())["kernels"]
    assert kernel["status"] == "boot failed" and kernel["rows"] == [] and kernel["uname"] == ""
    assert kernel["reason"].startswith("no result within the 1s timeout")


def test_unknown_kernel_is_one_line_error(verify_project: Path, tmp_path: Path) -> None:
    proc = _verify(verify_project, tmp_path, "9.9.9-cloud-amd64")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {verify_project}: --kernel: 9.9.9-cloud-amd64 is not in the matrix "
                                   f"(has: {', '.join(sorted(KERNELS))})")


def test_no_wheel_is_one_line_error(verify_project: Path, tmp_path: Path) -> None:
    proc = _verify(verify_project, tmp_path, REJECTED_ON)
    assert proc.returncode == 7
    assert proc.stderr.strip() == f"error: no hids_bytecode wheel in {tmp_path}: run `invoke build-all` first"


def test_missing_unsigned_image_falls_back_to_the_signed_package() -> None:
    from hidsbuild.apt import PrivateApt
    from hidsbuild.kernels import load_matrix
    from hidsbuild.verify.images import fetch_image, image_refs

    kernel = next(k for k in load_matrix(ROOT / "kernels.yaml").kernels if k.release == "5.10.0-46-cloud-amd64")
    assert [r.name for r in image_refs(kernel)] == [f"linux-image-{kernel.release}-unsigned",
                                                    f"linux-image-{kernel.release}"]
    apt = PrivateApt(SHARED_CACHE / "verify" / "apt-fallback", [kernel.suite], [kernel.deb_arch])
    image = fetch_image(apt, kernel, SHARED_CACHE)  # its -unsigned .deb 404s on the mirror
    assert image.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"  # an x86 boot image
    assert "CONFIG_BPF_SYSCALL=y" in image.config.read_text()


def test_strict_fails_on_an_unproved_kernel(verify_project: Path, mini_objects: dict[str, bytes],
                                           tmp_path: Path) -> None:
    dist = _wheel(tmp_path, {r: mini_objects["good"] for r in KERNELS})
    doc = yaml.safe_load(verify_project.read_text())
    doc["kernels"][0]["image"] = "linux-image-hids-test-not-served"
    matrix = verify_project.with_name("kernels-unserved-image.yaml")  # beside the sources it names
    matrix.write_text(yaml.safe_dump(doc, sort_keys=False))
    release = doc["kernels"][0]["release"]
    lenient = _verify(matrix, dist, release)
    assert lenient.returncode == 0, lenient.stderr
    assert "not proved" in lenient.stderr
    strict = _invoke("verify", "--matrix", str(matrix), "--dist", str(dist), "--cache-dir", str(SHARED_CACHE),
                     "--kernel", release, "--strict")
    assert strict.returncode == 7 and "unproved" in strict.stderr


# --- every hook, every event (issue 15): real bpf/ objects, their workloads, CO-RE in the guest --------

VERIFY_DIR = ROOT / "hidsbuild" / "verify"
# The CI's short verify: one exact object per program, spread over the two kernels, and one CO-RE
# object, checked on both (`invoke verify` checks every object and variant of every kernel).
REAL_UNITS = {
    "6.1.0-50-cloud-amd64": ("process", "kernel"),
    "6.12.117+deb13-cloud-amd64": ("file", "network"),
}
CORE_PROGRAM = "network"  # its sockets are reached through task->files->fdt: the most relocations
PROOFS = {"attached", "n/a"}


def _guest_modules(monkeypatch: pytest.MonkeyPatch) -> Any:
    """guest_check and workloads as the guest imports them: side by side, with the loader."""
    monkeypatch.syspath_prepend(str(ROOT / "loader"))
    monkeypatch.syspath_prepend(str(VERIFY_DIR))
    import guest_check
    import workloads
    return guest_check, workloads


def _any_facts() -> Any:
    """Workload facts that hold a value under every key, nested ones included."""
    from collections import defaultdict

    return defaultdict(_any_facts)


def test_declared_event_kinds_are_the_probe_sources_and_each_has_a_workload() -> None:
    from hidsbuild.verify import workloads

    assert sorted(workloads.DECLARED) == sorted(p.name.split(".")[0] for p in (ROOT / "bpf").glob("*.bpf.c"))
    for program, kinds in workloads.DECLARED.items():
        emitted = set(re.findall(r"HIDS_EV_([A-Z_]+)", (ROOT / "bpf" / f"{program}.bpf.c").read_text()))
        assert {k.upper() for k in kinds} == emitted, program
        # Every declared kind has at least one expected event, with at least one field checked.
        expected = workloads.expectations(program, _any_facts())
        assert {e.kind for e in expected} == set(kinds), program
        assert all(e.fields for e in expected), program


def test_a_field_that_differs_fails_its_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    guest_check, _ = _guest_modules(monkeypatch)
    facts = {"pids": [7], "pid": 7, "a": "/w/a", "b": "/w/b", "c": "/w/c", "dir": "/w/d"}
    hdr = {"tgid": 7}
    events = [{"event": "chmod", "hdr": hdr, "path": "/w/a", "mode": 0o600, "dfd": -100},
              {"event": "rmdir", "hdr": hdr, "path": "/w/d", "dfd": -100},
              {"event": "rmdir", "hdr": {"tgid": 8}, "path": "/w/d", "dfd": -100}]
    checks = guest_check._kind_checks("file", facts, events)
    assert checks["chmod"]["status"] == "fail" and checks["chmod"]["got"][0]["mode"] == 0o600
    assert checks["rmdir"] == {"status": "ok", "count": 1, "expected": ["tgid=7 path=/w/d"], "got": []}
    assert checks["open"]["status"] == "fail" and checks["open"]["got"] == []


def test_an_event_the_guest_cannot_produce_is_na_with_its_proof(monkeypatch: pytest.MonkeyPatch) -> None:
    guest_check, workloads = _guest_modules(monkeypatch)
    hdr = {"tgid": 7}
    # No memory controller: oom_kill n/a with the guest's proof, nothing awaited, the rest still checked.
    kernel = {"pid": 7, "target": "/w/mnt", "bpf_attr_size": 72, "ptrace_target": 8, "module_fd": 3,
              "module_len": 10, "oom_na": "/sys/fs/cgroup/cgroup.controllers lacks memory (it lists: cpu io pids)"}
    mount = {"event": "mount", "hdr": hdr, "source": "hids-src", "target": "/w/mnt", "fstype": "tmpfs",
             "mount_flags": 6}
    checks = guest_check._kind_checks("kernel", kernel, [mount])
    assert checks["oom_kill"] == {"status": "n/a", "count": 0, "expected": [], "got": [],
                                  "n/a": [kernel["oom_na"]]}
    assert checks["mount"]["status"] == "ok" and checks["bpf"]["status"] == "fail"
    # No IPv6 in the guest: each kind still needs its IPv4 event, and keeps the IPv6 proof beside it.
    v4 = {"host": "127.0.0.1", "port": 80, "cport": 5000, "srv_fd": 3, "cli_fd": 4, "conn_fd": 5}
    network = {"pid": 7, "v4": v4, "v6_na": "the guest's kernel runs no IPv6: /proc/net/if_inet6 is absent"}
    tcp = {"hdr": hdr, "family": 2, "protocol": 6, "saddr": "127.0.0.1", "daddr": "127.0.0.1"}
    connect = {**tcp, "event": "connect", "fd": 4, "ret": 0, "sport": 5000, "dport": 80}
    checks = guest_check._kind_checks("network", network, [connect])
    assert checks["connect"]["status"] == "ok" and checks["connect"]["n/a"] == [network["v6_na"]]
    assert checks["accept"]["status"] == "fail" and checks["accept"]["n/a"] == [network["v6_na"]]
    from hidsbuild.verify.page import na_kinds
    assert na_kinds({"kinds": checks}) == {k: [network["v6_na"]] for k in ("accept", "close", "connect")}


def test_memory_controller_absence_is_read_from_the_guests_files(tmp_path: Path) -> None:
    from hidsbuild.verify.workloads import memory_controller_absent

    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io pids\n")
    assert memory_controller_absent(str(tmp_path)) == (
        f"{tmp_path}/cgroup.controllers lacks memory (it lists: cpuset cpu io pids)")
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert memory_controller_absent(str(tmp_path)) == ""
    assert memory_controller_absent(str(tmp_path / "v1")) == (
        f"no cgroup2 hierarchy at {tmp_path}/v1: {tmp_path}/v1/cgroup.controllers is absent")
    # This host mounts cgroup v1 at /sys/fs/cgroup (no cgroup.controllers), or a cgroup2 one.
    host = memory_controller_absent()
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    assert (host == "") == (controllers.exists() and "memory" in controllers.read_text().split())


@pytest.mark.skipif(not Path("/proc/net/if_inet6").exists(), reason="this host runs no IPv6")
def test_network_workload_connects_over_ipv4_and_ipv6() -> None:
    import socket

    from hidsbuild.verify import workloads

    proc = subprocess.run([sys.executable, "-B", str(VERIFY_DIR / "workloads.py"), "network", "/tmp/unused"],
                          capture_output=True, text=True, timeout=60, check=True)
    facts = json.loads(proc.stdout)
    assert facts["v4"]["host"] == "127.0.0.1" and facts["v6"]["host"] == "::1" and "v6_na" not in facts
    by_family: dict[int, list[str]] = {}
    for want in workloads.expectations("network", facts):
        by_family.setdefault(want.fields["family"], []).append(want.kind)
        assert want.fields["sport"] and want.fields["dport"] and want.fields["saddr"] == want.fields["daddr"]
    pair = ["connect", "accept", "close"]
    assert by_family == {socket.AF_INET: pair, socket.AF_INET6: pair}


def test_a_guest_without_core_rows_fails(tmp_path: Path) -> None:
    from hidsbuild.kernels import load_matrix
    from hidsbuild.verify.results import KernelResult
    from hidsbuild.verify.run import _expected_units, _Guest, _unchecked

    release = "6.1.0-50-cloud-amd64"
    objects = [{"unit": f"{p}/{release}/w1d0", "kind": "exact", "kernel": {"release": release, "arch": "x86_64"}}
               for p in ("file", "network")]
    objects += [{"unit": f"{p}/core-{a}/w1d0", "kind": "core", "kernel": {"arch": a}}
                for p in ("file", "network") for a in ("x86_64", "aarch64")]
    (tmp_path / "hids_bytecode" / "data").mkdir(parents=True)
    (tmp_path / "hids_bytecode" / "data" / "manifest.json").write_text(json.dumps({"objects": objects}))
    kernel = next(k for k in load_matrix(ROOT / "kernels.yaml").kernels if k.release == release)
    exact, core = _expected_units(tmp_path, kernel)
    assert exact == [f"file/{release}/w1d0", f"network/{release}/w1d0"]
    assert core == ["file/core-x86_64/w1d0", "network/core-x86_64/w1d0"]  # its own arch's only
    guest = _Guest(KernelResult.of(kernel), exact, core)
    guest.result.rows = [{"unit": u} for u in exact]
    assert _unchecked(guest, kernel.arch) == ("no CO-RE row for x86_64 in the guest's result (CO-RE is proved on "
                                              "every kernel): file/core-x86_64/w1d0, network/core-x86_64/w1d0")
    guest.result.rows += [{"unit": "network/core-x86_64/w1d0"}]
    assert _unchecked(guest, kernel.arch).endswith("result (CO-RE is proved on every kernel): file/core-x86_64/w1d0")
    guest.result.rows += [{"unit": "file/core-x86_64/w1d0"}]
    assert _unchecked(guest, kernel.arch) == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="reads /proc/kallsyms names and tracefs")
def test_na_only_with_the_kernels_own_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    guest_check, _ = _guest_modules(monkeypatch)
    hooks = guest_check.HookFacts()
    assert hooks.absent("tracepoint/syscalls/sys_enter_openat") is None  # this host has it
    assert hooks.absent("raw_tracepoint/sched_process_exec") is None
    assert hooks.absent("tracepoint/syscalls/sys_enter_hids_nothing") == (
        "no tracepoint syscalls/sys_enter_hids_nothing in the guest's tracefs "
        "(/sys/kernel/tracing/events/syscalls/sys_enter_hids_nothing)")
    # This host's kernel has no kprobes at all: that fact, not the symbol, decides.
    assert (Path("/sys/kernel/tracing/kprobe_events").exists()
            or hooks.absent("kprobe/__x64_sys_openat") == "the guest's kernel has no kprobes "
                                                          "(no kprobe_events in its tracefs, /sys/kernel/tracing)")


@pytest.fixture(scope="session")
def real_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/ of the real bpf/ programs for the two kernels and CO-RE x86_64, wrapper variant only.
    Built in the shared test cache: the build is not what is tested here, and reruns reuse its objects."""
    from conftest import run_build

    tmp = tmp_path_factory.mktemp("verify-real")
    doc = yaml.safe_load((ROOT / "kernels.yaml").read_text())
    doc["kernels"] = [{"release": r, "arch": "x86_64", "suite": s, "version": v} for r, (s, v) in KERNELS.items()]
    doc["core"] = {"x86_64": {"btf_from": "6.12.117+deb13-cloud-amd64"}}
    doc["variants"] = {"syscall_wrapper": [True], "debug": [False]}
    (tmp / "kernels.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copytree(ROOT / "bpf", tmp / "bpf")
    proc = run_build(tmp / "kernels.yaml", tmp / "build", SHARED_CACHE, "--no-bundle")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "build"


def _subset_wheel(build: Path, units: set[str], tmp: Path) -> Path:
    """dist/ with the real wheel of only `units` of `build` (bundle refuses unindexed objects)."""
    index = json.loads((build / "index.json").read_text())
    index["units"] = [u for u in index["units"] if u["unit"] in units]
    assert {u["unit"] for u in index["units"]} == units
    sub = tmp / "build-subset"
    for entry in index["units"]:
        for rel in (entry["object"], entry["source"]["path"]):
            (sub / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(build / rel, sub / rel)
    (sub / "index.json").write_text(json.dumps(index))
    proc = _invoke("bundle", "--build-dir", str(sub), "--dist", str(tmp / "dist"))
    assert proc.returncode == 0, proc.stderr
    return tmp / "dist"


def _assert_pass_proves_everything(run: dict[str, Any], declared: tuple[str, ...]) -> None:
    assert set(run["kinds"]) == set(declared)
    assert all(c["status"] == "ok" and c["count"] >= 1 for c in run["kinds"].values()), run["kinds"]
    counters = run["counters"]
    assert counters["status"] == "ok" and counters["emitted"] == counters["read"] and counters["lost"] == 0
    assert all(counters["emitted"].get(kind, 0) >= run["events"][kind] >= 1 for kind in declared), counters


def _assert_row_proves_everything(row: dict[str, Any], declared: tuple[str, ...]) -> None:
    assert (row["select"], row["load"], row["attach"], row["event"]) == ("ok", "ok", "ok", "ok"), row["error"]
    _assert_pass_proves_everything(row, declared)
    assert {p["proof"] for p in row["programs"]} <= PROOFS, row["programs"]
    # Where the loader attached kprobes, the tracepoint alternatives ran the workload again.
    passed_over = any(p["pass"] == "tracepoint" for p in row["programs"])
    assert passed_over == bool(row["tracepoint_pass"]), row["unit"]
    if passed_over:
        _assert_pass_proves_everything(row["tracepoint_pass"], declared)
    for program in row["programs"]:
        if program["proof"] == "n/a":
            assert "kallsyms" in program["message"] or "tracefs" in program["message"], program


@pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF needs root")
def test_guest_checks_prove_core_objects_on_this_host(real_build: Path, tmp_path: Path) -> None:
    # The guest's own code, run here: this kernel (no kprobes, no modules, cgroup v1) proves the
    # process, file and network CO-RE objects whole, without a VM.
    dist = _subset_wheel(real_build, {f"{p}/core-x86_64/w1d0" for p in ("process", "file", "network")}, tmp_path)
    site = tmp_path / "site"
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as zf:
        zf.extractall(site)
    proc = subprocess.run([sys.executable, "-B", str(VERIFY_DIR / "guest_check.py")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    doc = json.loads(proc.stdout.split("===HIDS-VERIFY-BEGIN===")[1].split("===HIDS-VERIFY-END===")[0])
    assert doc["error"] == "", doc.get("traceback")
    from hidsbuild.verify.workloads import DECLARED as declared
    core_units = sorted(f"{p}/core-x86_64/w1d0" for p in ("file", "network", "process"))
    assert sorted(r["unit"] for r in doc["rows"]) == core_units
    for row in doc["rows"]:
        assert row["kind"] == "core"
        _assert_row_proves_everything(row, declared[row["program"]])


def test_every_event_kind_of_real_objects_and_core_in_two_guests(verify_project: Path, real_build: Path,
                                                                   tmp_path: Path) -> None:
    from hidsbuild.verify.workloads import DECLARED

    units = {f"{p}/{r}/w1d0" for r, programs in REAL_UNITS.items() for p in programs}
    dist = _subset_wheel(real_build, units | {f"{CORE_PROGRAM}/core-x86_64/w1d0"}, tmp_path)
    proc = _verify(verify_project, dist, *KERNELS, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((dist / "verify.json").read_text())
    for kernel in doc["kernels"]:
        assert kernel["status"] == "ok" and kernel["uname"] == kernel["release"], kernel["reason"]
        exact = [r for r in kernel["rows"] if r["kind"] == "exact"]
        core = [r for r in kernel["rows"] if r["kind"] == "core"]
        assert sorted(r["program"] for r in exact) == sorted(REAL_UNITS[kernel["release"]])
        assert [r["unit"] for r in core] == [f"{CORE_PROGRAM}/core-x86_64/w1d0"]  # CO-RE on every kernel
        for row in kernel["rows"]:
            _assert_row_proves_everything(row, DECLARED[row["program"]])
            if row["program"] == "kernel":
                # A real module from this kernel's image package, loaded (finit_module, then
                # init_module) and unloaded in each pass.
                assert row["workload"]["module"] == "/opt/hids/modules/nls_iso8859-1.ko", row["workload"]
                assert row["workload"]["module_errors"] == ["loaded", "loaded"], row["workload"]
                assert row["tracepoint_pass"]["workload"]["module_errors"] == ["loaded", "loaded"]


def test_a_guest_that_dies_before_init_is_booted_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # qemu's TCG crashing a kernel before /init cannot be had on demand: the boots are given here,
    # with the console text of a real one (6.12.95+deb12 under qemu 7.2 TCG).
    from hidsbuild.kernels import load_matrix
    from hidsbuild.verify import run
    from hidsbuild.verify.images import KernelImage
    from hidsbuild.verify.results import KernelResult
    from hidsbuild.verify.vm import Boot

    kernel = next(k for k in load_matrix(ROOT / "kernels.yaml").kernels if k.release == "6.12.95+deb12-cloud-amd64")
    oops = "[    2.68] Oops: general protection fault, maybe for address 0x10: 0000 [#1] PREEMPT SMP NOPTI\n"
    crashed = Boot(None, oops, False, 3.0, 300.0)
    later = Boot(None, f"{run.GUEST_BOOTED} {kernel.release} x86_64\n{oops}", False, 40.0, 300.0)
    good = Boot({"uname": kernel.release, "rows": [], "error": ""}, f"{run.GUEST_BOOTED} {kernel.release}", False,
                50.0, 300.0)
    opts = run.VerifyOptions(ROOT / "kernels.yaml", tmp_path, tmp_path)

    def booted(*boots: Boot) -> KernelResult:
        queue = list(boots)
        monkeypatch.setattr(run, "boot", lambda *_: queue.pop(0))
        guest = run._Guest(KernelResult.of(kernel), [], [], KernelImage(tmp_path, tmp_path), tmp_path)
        result = run._boot(kernel, guest, opts)
        assert not queue  # no boot more than needed
        return result

    result = booted(crashed, crashed, good)
    assert result.status == "ok" and result.boot_seconds == 50.0
    assert result.boot_retries == [f"guest stopped without a result: {oops.strip()}"] * 2
    # A guest that crashed once its /init ran may have been crashed by what is verified: never retried.
    result = booted(crashed, later)
    assert result.status == "boot failed" and len(result.boot_retries) == 1
    result = booted(*[crashed] * run.BOOT_ATTEMPTS)
    assert result.status == "boot failed" and len(result.boot_retries) == run.BOOT_ATTEMPTS - 1
