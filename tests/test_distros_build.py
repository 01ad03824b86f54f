"""A custom kernel's own headers, built through the real pipeline (integration tier: docker, network).

The headers are real: Debian's 6.1.0-50 trees (fetched with the project's own apt code, or taken
from the shared test cache) merged into the one tree a custom kernel's `make modules_prepare`
leaves (.config, include/, arch/x86/ with its generated headers), under a release no archive
serves, 6.1.0-custom1. kernels.yaml names it `distro: local`. The same program is built for the
Debian kernel in the same matrix: same header content, so the same object, byte for byte.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_CACHE, run_build

from hidsbuild.apt import PrivateApt
from hidsbuild.headers import HeadersCache
from hidsbuild.kernels import load_matrix
from hidsbuild.validate import validate_object

pytestmark = pytest.mark.integration

RELEASE = "6.1.0-custom1"
MATRIX = """\
programs:
  process: {source: bpf/process.bpf.c}
variants:
  syscall_wrapper: [true]
  debug: [false]
kernels:
  - release: 6.1.0-50-cloud-amd64
    arch: x86_64
    suite: bookworm
    version: 6.1.176-1
  - distro: local
    release: 6.1.0-custom1
    arch: x86_64
    version: 6.1.176
    headers: headers/linux-6.1.0-custom1
"""


def _toolchain() -> str:
    """The project's pinned toolchain block, so the image already built serves this build too."""
    return (ROOT / "kernels.yaml").read_text().split("\nprograms:")[0].split("toolchain:", 1)[1]


def _custom_tree(dest: Path) -> None:
    """Debian's -common and flavour trees merged as one custom kernel tree (Debian's stub Makefile
    and its links into linux-kbuild stay out: a custom tree has its own)."""
    project = dest.parents[1]
    (project / "kernels.yaml").write_text("toolchain:" + _toolchain() + "\n" + MATRIX.split("  - distro:")[0])
    debian = load_matrix(project / "kernels.yaml").kernels[0]
    cache = HeadersCache(SHARED_CACHE / "headers", PrivateApt(SHARED_CACHE / "apt", [debian.suite], [debian.deb_arch]))
    cache.fetch([debian])
    described = cache.describe(debian)
    mount = {str(i): root for i, root in enumerate(described.packages)}
    common, flavour = ((mount[t.split("/", 1)[0]] / t.split("/", 1)[1]) for t in (described.common, described.flavour))
    shutil.copytree(common, dest, symlinks=True)
    for entry in flavour.iterdir():
        if entry.is_symlink() or entry.name == "Makefile":
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, dest / entry.name)


def _cache(tmp: Path) -> Path:
    """An empty object store; the toolchain state and the two Debian packages' trees shared (the
    custom tree's entry is made in this cache, not the shared one)."""
    cache = tmp / "cache"
    (cache / "headers").mkdir(parents=True)
    for sub in ("apt", "state", "btf"):
        (SHARED_CACHE / sub).mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(SHARED_CACHE / sub)
    for path in (SHARED_CACHE / "headers").glob("linux-headers-6.1.0-50-*_6.1.176-1_amd64*"):
        (cache / "headers" / path.name).symlink_to(path)
    return cache


def _units(build: Path) -> dict[str, dict]:
    return {u["kernel"]["release"]: u for u in json.loads((build / "index.json").read_text())["units"]}


def test_custom_kernel_headers_build_through_the_pipeline(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "bpf", project / "bpf")
    tree = project / "headers" / f"linux-{RELEASE}"
    _custom_tree(tree)
    (project / "kernels.yaml").write_text("toolchain:" + _toolchain() + "\n" + MATRIX)
    cache = _cache(tmp_path)

    proc = run_build(project / "kernels.yaml", tmp_path / "build", cache, "--no-bundle")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    units = _units(tmp_path / "build")
    custom, debian = units[RELEASE], units["6.1.0-50-cloud-amd64"]
    assert custom["kernel"]["distro"] == "local" and custom["kernel"]["version"] == "6.1.176"
    data = (tmp_path / "build" / custom["object"]).read_bytes()
    info = validate_object(data)  # EM_BPF, license, .BTF and .BTF.ext, programs in known sections
    assert info is not None
    assert (custom["programs"], custom["maps"]) == (debian["programs"], debian["maps"])
    assert {"exec__raw_tp", "fork__raw_tp", "exit__raw_tp"} <= {p["name"] for p in custom["programs"]}
    # Compiled against the custom tree alone, whose content is Debian's: the very same bytes.
    assert f"/headers/0/usr/src/linux-headers-{RELEASE}/include" in json.dumps(custom)
    assert "linux-headers-6.1.0-50" not in json.dumps(custom)
    assert custom["sha256"] == debian["sha256"]
    inputs = json.loads((tmp_path / "build" / "index.json").read_text())["inputs"]
    (record,) = [h for h in inputs["headers"] if h.get("distro") == "local"]
    assert record["name"] == f"linux-headers-{RELEASE}" and len(record["sha256"]) == 64

    # It loads on this host: the verifier accepts every program (offsets are 6.1's; nothing is attached).
    pin = Path("/sys/fs/bpf") / f"hids-test-local-{tmp_path.name}"
    obj = tmp_path / "custom.o"
    obj.write_bytes(data)
    load = subprocess.run(["bpftool", "prog", "loadall", str(obj), str(pin)], capture_output=True, text=True)
    try:
        assert load.returncode == 0, load.stderr[-2000:]
        assert {p.name for p in pin.iterdir()} == {p["name"] for p in custom["programs"]}
    finally:
        shutil.rmtree(pin, ignore_errors=True)

    # Nothing changed: all cached. A header edited in the user's tree: that kernel's unit only is rebuilt.
    again = run_build(project / "kernels.yaml", tmp_path / "build", cache, "--no-bundle")
    assert again.returncode == 0 and "built 0, cached 2," in again.stdout + again.stderr, again.stderr[-2000:]
    with open(tree / "include/linux/sched.h", "a") as header:
        header.write("/* a local patch */\n")
    edited = run_build(project / "kernels.yaml", tmp_path / "build", cache, "--no-bundle")
    assert edited.returncode == 0 and "built 1, cached 1," in edited.stdout + edited.stderr, edited.stderr[-2000:]
    assert _units(tmp_path / "build")[RELEASE]["sha256"] == custom["sha256"]  # a comment changes no byte
