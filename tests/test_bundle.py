"""invoke bundle on real builds: the wheel installs with pip into a fresh venv and its loader
lists and verifies what it ships; bundling is byte-reproducible; shards merge into the one-shot
wheel; bad build directories are refused naming the file or unit, leaving dist/ untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TEST_PROJECT, fresh_cache, run_build

from hidsbuild.bundle import bundle_wheels
from hidsbuild.errors import BundleError
from hidsbuild.versioning import VERSION

pytestmark = pytest.mark.integration

WHEEL_GLOB = "hids_bytecode-*-py3-none-manylinux_2_17_x86_64.whl"


def run_bundle(dist: Path, *sources: Path, merge: bool = False) -> subprocess.CompletedProcess:
    """`invoke bundle` as a user runs it, in its own process."""
    args = [a for s in sources for a in ("--merge", str(s))] if merge else ["--build-dir", str(sources[0])]
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "bundle", *args,
                           "--dist", str(dist)], check=False, capture_output=True, text=True, cwd=ROOT)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line; the step log before it is progress, not the error."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and proc.stderr.splitlines()[-1] == lines[0], proc.stderr
    return lines[0]


def only_wheel(dist: Path) -> Path:
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].match(WHEEL_GLOB), wheels
    return wheels[0]


@pytest.fixture(scope="module")
def one_shot_wheel(built_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist-one-shot")
    proc = run_bundle(dist, built_project)
    assert proc.returncode == 0, proc.stderr
    assert "of raw" in proc.stderr  # the size table against the raw objects was printed
    return only_wheel(dist)


@pytest.fixture(scope="module")
def venv(one_shot_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel pip-installed from the file alone, as a host installs it."""
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    proc = subprocess.run([str(root / "bin/pip"), "install", "-q", "--no-index", str(one_shot_wheel)],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return root


def test_installed_wheel_ships_every_unit_and_verifies(venv: Path, one_shot_wheel: Path, built_project: Path) -> None:
    index = json.loads((built_project / "index.json").read_text())
    version = one_shot_wheel.name.split("-")[1]
    assert version.startswith(f"{VERSION}+b") and len(version) == len(VERSION) + 2 + 12

    shown = subprocess.run([str(venv / "bin/hids-bytecode"), "--version"], capture_output=True, text=True, check=True)
    listed = json.loads(subprocess.run([str(venv / "bin/hids-bytecode"), "list", "--json"], capture_output=True,
                                       text=True, check=True).stdout)
    verified = json.loads(subprocess.run([str(venv / "bin/hids-bytecode"), "audit", "--json"], capture_output=True,
                                         text=True, check=True).stdout)
    assert listed["version"] == version and version[len(VERSION) + 2:] == listed["source_hash"][:12]
    assert shown.stdout.strip() == f"hids-bytecode {version} (source {listed['source_hash']})"
    assert sorted(o["unit"] for o in listed["objects"]) == sorted(u["unit"] for u in index["units"])
    assert verified == {"checked": len(index["units"]), "failed": [], "provenance": []}

    # The package's own data, read as the loader reads it, hashed here independently.
    probe = (
        "import hashlib, json, importlib.metadata as md\n"
        "from importlib import resources\n"
        "data = resources.files('hids_bytecode') / 'data'\n"
        "manifest = json.loads((data / 'manifest.json').read_text())\n"
        "objects = sorted(p.name for p in (data / 'objects').iterdir())\n"
        "digest = lambda rel: hashlib.sha256((data / rel).read_bytes()).hexdigest()\n"
        "bad = [e['unit'] for e in manifest['objects']"
        " if digest(e['object']) != e['sha256'] or digest(e['source']['path']) != e['source']['sha256']]\n"
        "meta = md.metadata('hids-bytecode')\n"
        "print(json.dumps({'manifest': manifest, 'objects': objects, 'bad': bad, 'requires': meta['Requires-Python'],"
        " 'deps': md.requires('hids-bytecode'),"
        " 'scripts': [(e.group, e.name, e.value) for e in md.distribution('hids-bytecode').entry_points]}))\n"
    )
    seen = json.loads(subprocess.run([str(venv / "bin/python"), "-c", probe], capture_output=True, text=True,
                                     check=True, cwd=venv).stdout)
    manifest = seen["manifest"]
    assert manifest["arch"] == "x86_64" and manifest["schema"] == 1 and seen["bad"] == []
    assert seen["objects"] == sorted({f"{u['sha256']}.o" for u in index["units"]})  # stored once by content
    assert len(seen["objects"]) < len(index["units"])
    assert all("compile_ns" not in e for e in manifest["objects"])
    assert seen["requires"] == ">=3.9" and seen["deps"] is None
    assert seen["scripts"] == [["console_scripts", "hids-bytecode", "hids_bytecode.cli:main"]]


def test_bundling_again_gives_the_same_bytes(built_project: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for dist in ("first", "again"):
        proc = run_bundle(tmp_path / dist, built_project)
        assert proc.returncode == 0, proc.stderr
    first = only_wheel(tmp_path / "first")
    assert only_wheel(tmp_path / "again").read_bytes() == first.read_bytes()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    (later,) = bundle_wheels([built_project], tmp_path / "later")
    assert later.name == first.name and later.read_bytes() != first.read_bytes()
    with zipfile.ZipFile(later) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2027, 1, 15, 8, 0, 0)}
        assert {i.external_attr >> 16 for i in zf.infolist()} == {0o100644}


def test_two_shards_rebuilt_and_merged_equal_the_one_shot_wheel(built_project: Path, tmp_path: Path) -> None:
    cache = fresh_cache(tmp_path)  # an empty object store: the shards compile everything again
    shards = [tmp_path / "shard1", tmp_path / "shard2"]
    for number, build in enumerate(shards, 1):
        proc = run_build(TEST_PROJECT / "kernels.yaml", build, cache, "--shard", f"{number}/2")
        assert proc.returncode == 0, proc.stderr
    units = [{u["unit"] for u in json.loads((b / "index.json").read_text())["units"]} for b in shards]
    assert len(units[0]) == len(units[1]) == 2 and not units[0] & units[1]  # w1 only: w0 cannot run there

    dist, one_shot = tmp_path / "dist", tmp_path / "one-shot"
    proc = run_bundle(dist, shards[0])
    assert proc.returncode == 0, proc.stderr
    partial = only_wheel(dist)
    # Bundled back to back, so both see the same loader files.
    for proc in (run_bundle(dist, *shards, merge=True), run_bundle(one_shot, built_project)):
        assert proc.returncode == 0, proc.stderr
    assert not partial.exists()  # replaced by the merged wheel
    merged = only_wheel(dist)
    assert merged.name == only_wheel(one_shot).name != partial.name  # another object set, another version
    assert merged.read_bytes() == only_wheel(one_shot).read_bytes()


def _copy(build: Path, dest: Path) -> Path:
    shutil.copytree(build, dest)
    return dest


def test_conflicting_shards_are_refused_naming_the_unit(built_project: Path, tmp_path: Path) -> None:
    ours, theirs = _copy(built_project, tmp_path / "a"), _copy(built_project, tmp_path / "b")
    index = json.loads((theirs / "index.json").read_text())
    victim, other = index["units"][0], next(u for u in index["units"] if u["sha256"] != index["units"][0]["sha256"])
    # A consistent shard that built the victim unit into other (real) bytes.
    for key in ("object", "sha256", "size"):
        victim[key] = other[key]
    (theirs / "index.json").write_text(json.dumps(index))
    dist = tmp_path / "dist"
    proc = run_bundle(dist, ours, theirs, merge=True)
    assert proc.returncode == BundleError.exit_code
    assert "Traceback" not in proc.stderr
    assert error_line(proc).startswith(f"error: unit {victim['unit']} differs between {ours} and {theirs}")
    assert not dist.exists() or not any(dist.iterdir())


def _truncate(build: Path, name: str) -> Path:
    path = build / "objects" / name
    path.write_bytes(path.read_bytes()[:100])
    return path


def _foreign(build: Path, name: str) -> Path:
    path = build / "objects" / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _missing(build: Path, name: str) -> Path:
    path = build / "objects" / name
    path.unlink()
    return path


def _stray(build: Path, name: str) -> Path:
    path = build / "objects" / f"{'0' * 64}.o"
    shutil.copy(build / "objects" / name, path)
    return path


@pytest.mark.parametrize("damage, words", [(_truncate, "truncated"), (_foreign, "sha256"), (_missing, "missing"),
                                           (_stray, "not named by")])
def test_damaged_build_dir_is_refused_naming_the_file(built_project: Path, tmp_path: Path, damage, words) -> None:
    build = _copy(built_project, tmp_path / "build")
    name = json.loads((build / "index.json").read_text())["units"][0]["object"].split("/")[1]
    path = damage(build, name)
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "keep.txt").write_text("not ours")
    proc = run_bundle(dist, build)
    assert proc.returncode == BundleError.exit_code
    assert "Traceback" not in proc.stderr
    assert error_line(proc).startswith(f"error: {path}: ") and words in error_line(proc)
    assert sorted(os.listdir(dist)) == ["keep.txt"]
    assert hashlib.sha256((dist / "keep.txt").read_bytes()).hexdigest() == hashlib.sha256(b"not ours").hexdigest()
