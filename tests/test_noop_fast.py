"""Fast tier (no docker, no root, no network): what keeps a rebuild with nothing changed fast
without trusting more than before. Nothing the engine needs is imported, files whose bytes would
not change are not rewritten (but a changed one is), a cache hit must record the build's toolchain,
and a wheel is reused only when it is byte for byte the one its inputs make."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from conftest_loader import MINI_SOURCE, compile_core, make_loader_data

from hidsbuild.artifacts import write_if_changed
from hidsbuild.bundle import bundle_wheels
from hidsbuild.cache import ObjectCache
from hidsbuild.pipeline import _index_bytes
from hidsbuild.validate import validate_object
from hidsbuild.wheel import inputs_digest, unchanged, wheel_bytes, write_wheel

KEY = "cd" * 32


def test_the_modules_of_a_no_op_build_import_no_docker_sdk_nor_elf_parser() -> None:
    # docker + requests and pyelftools cost ~0.25 s of a no-op's start; they load when a unit compiles.
    # cryptography and http.client (~80 ms) load when a key is read or a package is downloaded.
    heavy = ("docker", "requests", "elftools", "cryptography", "http")
    code = ("import sys; import tasks, hidsbuild.pipeline, hidsbuild.bundle; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m == 'rich.progress'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]"


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_same_bytes_are_not_rewritten_but_an_altered_file_is(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert write_if_changed(path, b"abc") is True
    before = _stamp(path)
    assert write_if_changed(path, b"abc") is False and _stamp(path) == before
    path.write_bytes(b"abd")  # same size, other bytes: compared, not trusted by size
    assert write_if_changed(path, b"abc") is True and path.read_bytes() == b"abc"
    os.chmod(path, 0o600)
    assert write_if_changed(path, b"abc", 0o644) is True and path.stat().st_mode & 0o777 == 0o644


def test_index_text_has_a_line_per_unit_and_reads_back_as_the_index() -> None:
    units = [{"unit": f"p/k{i}/w1d0", "sha256": str(i) * 64, "programs": [{"name": "a", "section": "b"}]}
             for i in range(3)]
    index: dict[str, Any] = {"schema": 1, "units": units, "failures": [], "inputs": {"matrix": {"path": "k.yaml"}},
                             "skipped": [{"unit": "p/k0/w0d0", "arch": "x86_64", "reason": "r"}]}
    text = _index_bytes(index).decode()
    assert json.loads(text) == index
    assert [line for line in text.splitlines() if line.startswith('{"programs"')] == \
        [json.dumps(u, sort_keys=True) + ("," if i < 2 else "") for i, u in enumerate(units)]
    assert json.loads(_index_bytes({**index, "units": []})) == {**index, "units": []}


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_core(MINI_SOURCE, tmp_path_factory.mktemp("obj"))


def _put(root: Path, data: bytes, toolchain: str) -> None:
    info = validate_object(data)
    ObjectCache(root).put(KEY, data, {"unit": "mini/x/w1d0", "programs": list(info.programs), "maps": list(info.maps),
                                      "license": info.license, "clang": "test", "toolchain": toolchain,
                                      "compile_ns": 1, "warnings": ""})


def test_a_hit_that_records_another_toolchain_is_refused(tmp_path: Path, obj: bytes, capsys) -> None:
    # The key holds the toolchain id, so such an entry was written by a bug or edited; it must
    # never be paired with this build's toolchain.
    _put(tmp_path, obj, "old-toolchain")
    assert ObjectCache(tmp_path, "new-toolchain").get(KEY) is None
    assert "compiled by toolchain old-toolchain, not this build's new-toolchain" in capsys.readouterr().err
    assert not (tmp_path / KEY[:2] / KEY).exists()
    _put(tmp_path, obj, "new-toolchain")
    hit = ObjectCache(tmp_path, "new-toolchain").get(KEY)
    assert hit is not None and hit.data == obj


def test_units_sharing_an_object_are_each_checked_against_their_own_record(tmp_path: Path, obj: bytes) -> None:
    # The ELF reader's answer is kept per sha256 for the run; each entry's bytes are still hashed
    # and its own recorded programs compared with that answer.
    _put(tmp_path, obj, "t")
    other = "ef" * 32
    (tmp_path / other[:2]).mkdir()
    shutil.copytree(tmp_path / KEY[:2] / KEY, tmp_path / other[:2] / other)
    meta = json.loads((tmp_path / other[:2] / other / "meta.json").read_text())
    meta["programs"] = [{"name": "forged", "section": "kprobe/forged"}]
    (tmp_path / other[:2] / other / "meta.json").write_text(json.dumps(meta))
    cache = ObjectCache(tmp_path, "t")
    assert cache.get(KEY) is not None
    assert cache.get(other) is None


def _files() -> dict[str, bytes]:
    return {"pkg/__init__.py": b"x = 1\n", "pkg/data/a.o": bytes(range(256)) * 64,
            "pkg-1.dist-info/METADATA": b"Name: pkg\n"}


def test_a_wheel_is_reused_only_while_it_is_the_one_its_inputs_make(tmp_path: Path) -> None:
    files, info = _files(), "pkg-1.dist-info"
    wheel = tmp_path / "pkg-1-py3-none-any.whl"
    digest = inputs_digest(files, info)
    assert not unchanged(wheel, digest)  # no wheel yet
    write_wheel(wheel, wheel_bytes(files, info), digest)
    assert unchanged(wheel, digest)
    # Anything the bytes are made of is in the digest: a file's contents, its name, the date.
    assert inputs_digest({**files, "pkg/__init__.py": b"x = 2\n"}, info) != digest
    assert inputs_digest({n.replace("__init__", "other"): d for n, d in files.items()}, info) != digest
    assert inputs_digest(_files(), info, {"SOURCE_DATE_EPOCH": "1800000000"}) != digest
    # A wheel altered in place (same size) is not the recorded one.
    data = bytearray(wheel.read_bytes())
    data[100] ^= 1
    wheel.write_bytes(bytes(data))
    assert not unchanged(wheel, digest)


def _build_dir(tmp: Path) -> Path:
    """A build dir (index.json, objects/, sources/) holding the loader test data's objects."""
    data = make_loader_data(tmp / "loader")
    build = tmp / "build"
    entries = json.loads((data / "manifest.json").read_text())["objects"]
    for sub in ("objects", "sources"):
        (build / sub).mkdir(parents=True)
        for path in (data / sub).iterdir():
            (build / sub / path.name).write_bytes(path.read_bytes())
    (build / "index.json").write_text(json.dumps({"schema": 1, "units": entries, "failures": []}))
    return build


def test_bundling_unchanged_builds_again_keeps_the_wheel_and_its_bytes(tmp_path: Path, capsys) -> None:
    build = _build_dir(tmp_path)
    (wheel,) = bundle_wheels([build], tmp_path / "dist")
    before, data = _stamp(wheel), wheel.read_bytes()
    assert bundle_wheels([build], tmp_path / "dist") == [wheel]
    assert _stamp(wheel) == before and "unchanged" in capsys.readouterr().err
    (fresh,) = bundle_wheels([build], tmp_path / "fresh")
    assert fresh.read_bytes() == data  # what was kept is what a bundle from scratch writes
    with zipfile.ZipFile(wheel) as zf:
        assert zf.testzip() is None
    # Damaged in place: written again, whole.
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    wheel.write_bytes(bytes(damaged))
    bundle_wheels([build], tmp_path / "dist")
    assert wheel.read_bytes() == data
