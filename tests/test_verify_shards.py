"""The CI workflow's path, run here: build shards -> bundle --merge -> verify shards -> merged matrix.

.github/workflows/build-verify.yml is checked by actionlint and its commands are the ones run below:
`build-all --shard` on the small test project and `bundle --merge` (real compiles, real wheel), then
`verify --shard K/2` as two concurrent processes, as two runners would, on the two CI kernels (real
Debian images under qemu TCG, the real loader in the guest) and `verify --merge` of their verify.json.
The booted objects are the loader tests' mini probe entered as exact builds (as in test_verify.py):
the test project's `hello` is not a hids object the guest checks could read events from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, SHARED_CACHE, TEST_PROJECT, fresh_cache, run_build
from conftest_loader import MINI_SOURCE, _declared, compile_core

WORKFLOW = ROOT / ".github" / "workflows" / "build-verify.yml"
KERNELS = {  # release -> (suite, version): the CI kernels of test_verify.py
    "6.1.0-50-cloud-amd64": ("bookworm", "6.1.176-1"),
    "6.12.117+deb13-cloud-amd64": ("trixie", "6.12.117-1"),
}


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args],
                          check=False, capture_output=True, text=True, cwd=ROOT)


def start_invoke(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def mini_matrix(dest: Path, kernels: dict[str, tuple[str, str]], images: dict[str, str] | None = None) -> Path:
    """A kernels.yaml of the mini program over `kernels`, optionally with image package overrides."""
    source = dest / "bpf" / "mini.bpf.c"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(MINI_SOURCE.read_bytes())
    doc = {"toolchain": {"suite": "bookworm", "clang": 19}, "programs": {"mini": {"source": "bpf/mini.bpf.c"}},
           "variants": {"syscall_wrapper": [True, False], "debug": [False, True]},
           "kernels": [{"release": r, "arch": "x86_64", "suite": s, "version": v,
                        **({"image": images[r]} if images and r in images else {})} for r, (s, v) in kernels.items()]}
    path = dest / "kernels.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _entry(program: str, release: str, version: str, data: bytes, source: bytes) -> dict[str, Any]:
    sha, source_sha = hashlib.sha256(data).hexdigest(), hashlib.sha256(source).hexdigest()
    return {
        "unit": f"{program}/{release}/w1d0", "program": program, "kind": "exact",
        "kernel": {"release": release, "version": version.split("-")[0], "arch": "x86_64", "distro": "debian",
                   "flavour": "cloud-amd64", "package_version": version},
        "variant": {"syscall_wrapper": True, "debug": False},
        "object": f"objects/{sha}.o", "sha256": sha, "size": len(data), **_declared(data),
        "toolchain": {"clang": "host", "image": "none"},
        "source": {"path": f"sources/mini-{source_sha[:16]}.c", "sha256": source_sha}, "cflags": [],
    }


def mini_wheel(tmp: Path, objects: dict[tuple[str, str], bytes], versions: dict[str, str]) -> Path:
    """dist/ with the real bundled wheel of a build dir holding (program, release) -> object, w1d0
    each, and the w0 variants listed as skipped, as build-all records them on these kernels."""
    build, dist = tmp / "build", tmp / "dist"
    source = MINI_SOURCE.read_bytes()
    entries = [_entry(p, r, versions[r], data, source) for (p, r), data in objects.items()]
    for e, data in zip(entries, objects.values(), strict=True):
        for rel, blob in ((e["object"], data), (e["source"]["path"], source)):
            (build / rel).parent.mkdir(parents=True, exist_ok=True)
            (build / rel).write_bytes(blob)
    skipped = [{"unit": f"{p}/{r}/w0d0", "arch": "x86_64", "reason": "CONFIG_ARCH_HAS_SYSCALL_WRAPPER=y: test"}
               for p, r in objects]
    (build / "index.json").write_text(json.dumps({"schema": 1, "units": entries, "failures": [], "skipped": skipped}))
    proc = invoke("bundle", "--build-dir", str(build), "--dist", str(dist))
    assert proc.returncode == 0, proc.stderr
    return dist


@pytest.fixture(scope="module")
def good_object(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_core(MINI_SOURCE, tmp_path_factory.mktemp("shard-objects"))


def runner_cache(cache: Path) -> Path:
    """A shard runner's own cache dir (apt state, initramfs, unpacked wheel), as on a CI runner,
    with the kernel images and the guest base shared from the test cache: inputs, fetched once."""
    for sub in ("images", "base"):
        (SHARED_CACHE / "verify" / sub).mkdir(parents=True, exist_ok=True)
        (cache / "verify").mkdir(parents=True, exist_ok=True)
        (cache / "verify" / sub).symlink_to(SHARED_CACHE / "verify" / sub)
    return cache


def _run_lines(workflow: dict[str, Any]) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def test_workflow_passes_actionlint_and_runs_the_shard_merge_commands(tmp_path: Path) -> None:
    actionlint = Path(sys.executable).with_name("actionlint")
    proc = subprocess.run([str(actionlint), str(WORKFLOW)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The check can fail: the same workflow with the verify job needing a job that does not exist.
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("    needs: bundle\n", "    needs: bundel\n", 1))
    proc = subprocess.run([str(actionlint), str(broken)], check=False, capture_output=True, text=True)
    assert proc.returncode == 1 and "bundel" in proc.stdout

    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["jobs"]["bundle"]["needs"] == "build" and workflow["jobs"]["page"]["needs"] == "verify"
    runs = "\n".join(_run_lines(workflow))
    for command in ("invoke build-all --matrix \"$MATRIX\" --shard", "invoke bundle \"${merge[@]}\"",
                    "invoke verify --matrix \"$MATRIX\" --shard", "invoke verify \"${merge[@]}\" --matrix \"$MATRIX\""):
        assert command in runs, command
    env = workflow["env"]
    assert len(workflow["jobs"]["build"]["strategy"]["matrix"]["shard"]) == env["BUILD_SHARDS"]
    assert len(workflow["jobs"]["verify"]["strategy"]["matrix"]["shard"]) == env["VERIFY_SHARDS"]


def test_build_shards_bundle_merged_with_their_skipped_variants(tmp_path: Path) -> None:
    cache = fresh_cache(tmp_path)
    shards = [tmp_path / f"build-shard-{k}" for k in (1, 2)]
    for k, build in enumerate(shards, 1):
        proc = run_build(TEST_PROJECT / "kernels.yaml", build, cache, "--shard", f"{k}/2")
        assert proc.returncode == 0, proc.stderr
    proc = invoke("bundle", "--merge", str(shards[0]), "--merge", str(shards[1]), "--dist", str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*_x86_64.whl")
    with zipfile.ZipFile(wheel) as zf:
        manifest = json.loads(zf.read("hids_bytecode/data/manifest.json"))
    releases = ("6.1.0-50-cloud-amd64", "7.2.13+deb14-cloud-amd64")
    built = sorted(f"hello/{r}/w1d{d}" for r in releases for d in (0, 1))
    assert sorted(e["unit"] for e in manifest["objects"]) == built
    assert [s["unit"] for s in manifest["skipped"]] == sorted(f"hello/{r}/w0d{d}" for r in releases for d in (0, 1))


def test_verify_shards_side_by_side_then_merged(good_object: bytes, tmp_path: Path) -> None:
    matrix = mini_matrix(tmp_path / "project", KERNELS)
    dist = mini_wheel(tmp_path, {("mini", r): good_object for r in KERNELS}, {r: v for r, (_, v) in KERNELS.items()})
    shard_dists = []
    for k in (1, 2):  # each runner downloads the wheels into its own dist/
        shard_dists.append(tmp_path / f"verify-shard-{k}")
        shutil.copytree(dist, shard_dists[-1])
    procs = [start_invoke("verify", "--matrix", str(matrix), "--shard", f"{k}/2", "--dist", str(d), "--cache-dir",
                          str(runner_cache(tmp_path / f"cache-{k}")), "--timeout", "400", "--jobs", "1")
             for k, d in enumerate(shard_dists, 1)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all((d / "verify.json").is_file() for d in shard_dists), [o[1][-3000:] for o in outs]
    docs = [json.loads((d / "verify.json").read_text()) for d in shard_dists]
    for k, (proc, doc, out) in enumerate(zip(procs, docs, outs, strict=True), 1):
        assert proc.returncode == (0 if doc["ok"] else 7), out[1][-3000:]
        assert doc["shard"] == f"{k}/2" and len(doc["kernels"]) == 1
        kernel = doc["kernels"][0]
        assert kernel["uname"] == kernel["release"] and [r["unit"] for r in kernel["rows"]] == [
            f"mini/{kernel['release']}/w1d0"], kernel
        assert kernel["skipped"] == [{"unit": f"mini/{kernel['release']}/w0d0", "arch": "x86_64",
                                      "reason": "CONFIG_ARCH_HAS_SYSCALL_WRAPPER=y: test"}]
    # Sorted releases: 6.1.0-50 goes to shard 1, 6.12.117 to shard 2.
    assert [d["kernels"][0]["release"] for d in docs] == list(KERNELS)

    merged = tmp_path / "merged"
    proc = invoke("verify", "--merge", str(shard_dists[1]), "--merge", str(shard_dists[0] / "verify.json"),
                  "--matrix", str(matrix), "--dist", str(merged))
    whole = json.loads((merged / "verify.json").read_text())
    assert proc.returncode == (0 if whole["ok"] else 7), proc.stderr[-3000:]
    assert whole["kernels"] == [docs[0]["kernels"][0], docs[1]["kernels"][0]]  # in kernels.yaml's order
    assert whole["ok"] == (docs[0]["ok"] and docs[1]["ok"]) and "shard" not in whole
    text = (merged / "verify.txt").read_text()
    assert all(r in text for r in KERNELS)
    assert all(r in (merged / "compat.html").read_text() for r in KERNELS)

    # A shard that never reported leaves its kernel unproved: fine by default, a failure with --strict.
    alone = invoke("verify", "--merge", str(shard_dists[0]), "--matrix", str(matrix), "--dist", str(tmp_path / "m1"))
    part = json.loads((tmp_path / "m1" / "verify.json").read_text())
    assert part["unproved"] == ["6.12.117+deb13-cloud-amd64"] and part["kernels"][1]["status"] == "not verified"
    assert alone.returncode == (0 if docs[0]["ok"] else 7), alone.stderr
    strict = invoke("verify", "--merge", str(shard_dists[0]), "--matrix", str(matrix), "--dist",
                    str(tmp_path / "m2"), "--strict")
    assert strict.returncode == 7 and "unproved" in strict.stderr

    # Two shards that disagree about one kernel cannot both be its proof.
    liar = tmp_path / "liar" / "verify.json"
    liar.parent.mkdir()
    forged = json.loads((shard_dists[0] / "verify.json").read_text())
    forged["kernels"][0]["status"] = "boot failed" if forged["kernels"][0]["status"] == "ok" else "ok"
    liar.write_text(json.dumps(forged))
    proc = invoke("verify", "--merge", str(shard_dists[0]), "--merge", str(liar), "--matrix", str(matrix),
                  "--dist", str(tmp_path / "m3"))
    assert proc.returncode == 7
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 6.1.0-50-cloud-amd64 is in ")
    assert "different results" in proc.stderr


def _guests_of(pid: int) -> list[int]:
    """qemu processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            name, ppid = fields[0].split("(", 1)[1], int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and name.startswith("qemu-system"):
            found.append(int(stat.parent.name))
    return found


def test_sigterm_stops_every_running_guest_at_once(good_object: bytes, tmp_path: Path) -> None:
    matrix = mini_matrix(tmp_path / "project", KERNELS)
    dist = mini_wheel(tmp_path, {("mini", r): good_object for r in KERNELS}, {r: v for r, (_, v) in KERNELS.items()})
    proc = start_invoke("verify", "--matrix", str(matrix), "--dist", str(dist), "--cache-dir",
                        str(runner_cache(tmp_path / "cache")), "--jobs", "2")
    deadline = time.monotonic() + 300
    while len(_guests_of(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    guests = _guests_of(proc.pid)
    assert len(guests) == 2, proc.communicate()[1][-2000:]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert time.monotonic() - sent < 15, "a guest must not be waited for"
    assert not any(os.path.exists(f"/proc/{pid}/stat") for pid in guests)
    assert not (dist / "verify.json").exists()  # nothing half-proved is written
