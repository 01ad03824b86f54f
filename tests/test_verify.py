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
import subprocess
import sys
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
    sha, source_sha = hashlib.sha256(data).hexdigest(), hashlib.sha256(source).hexdigest()
    suite, version = KERNELS[release]
    return {
        "unit": f"mini/{release}/w{int(wrapper)}d0", "program": "mini", "kind": "exact",
        "kernel": {"release": release, "version": version.split("-")[0], "arch": "x86_64", "distro": "debian",
                   "flavour": "cloud-amd64", "package_version": version},
        "variant": {"syscall_wrapper": wrapper, "debug": False},
        "object": f"objects/{sha}.o", "sha256": sha, "size": len(data), "programs": [],
        "maps": ["events", "counters", "config"], "toolchain": {"clang": "host", "image": "none"},
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
    return {"good": compile_core(MINI_SOURCE, work), "rejected": compile_core(MINI_SOURCE, work, "-DHIDS_TEST_UNCHECKED_LOOKUP")}


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
