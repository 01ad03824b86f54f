"""kernels.yaml is refused before any work, with the file, line and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from hidsbuild.errors import ConfigError
from hidsbuild.kernels import load_matrix

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
toolchain: {suite: bookworm, clang: 19}
programs:
  hello: {source: hello.c}
variants:
  syscall_wrapper: [true, false]
  debug: [false, true]
kernels:
  - release: 6.1.0-50-cloud-amd64
    arch: x86_64
    suite: bookworm
    version: 6.1.176-1
  - release: 6.12.117+deb13-cloud-arm64
    arch: aarch64
    suite: trixie
    version: 6.12.117-1
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "hello.c").write_text("int x;\n")
    path = tmp_path / "kernels.yaml"
    path.write_text(text)
    return path


def test_default_matrix_parses_with_the_required_coverage() -> None:
    matrix = load_matrix(ROOT / "kernels.yaml")
    series = {".".join(k.upstream.split(".")[:2]) for k in matrix.kernels if k.arch == "x86_64"}
    assert {"5.10", "6.1", "6.12"} <= series and any(s.startswith("7.") for s in series)
    assert sum(1 for k in matrix.kernels if k.upstream.startswith("6.1.")) >= 2
    assert any(k.arch == "aarch64" for k in matrix.kernels)
    assert {p.name for p in matrix.programs} == {"process", "file", "network", "kernel"}
    assert len(matrix.programs[0].variants) == 4


def test_good_matrix_derives_packages(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, GOOD))
    arm = matrix.kernels[1]
    assert arm.headers == ("linux-headers-6.12.117+deb13-cloud-arm64", "linux-headers-6.12.117+deb13-common")
    assert arm.image == "linux-image-6.12.117+deb13-cloud-arm64-unsigned"
    assert (arm.deb_arch, arm.src_arch, arm.upstream, arm.flavour) == ("arm64", "arm64", "6.12.117", "cloud-arm64")


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "message"),
    [
        ("    suite: trixie\n", "", 12, "kernels[1].suite", "missing key"),
        ("arch: aarch64", "arch: ppc64", 13, "kernels[1].arch", "unknown arch 'ppc64'"),
        ("debug: [false, true]", "debug: [false, maybe]", 6, "variants.debug[1]", "expected true or false"),
        ("release: 6.12.117+deb13-cloud-arm64\n    arch: aarch64\n    suite: trixie\n    version: 6.12.117-1",
         "release: 6.1.0-50-cloud-amd64\n    arch: x86_64\n    suite: bookworm\n    version: 6.1.176-1",
         12, "kernels[1].release", "duplicate kernel 6.1.0-50-cloud-amd64"),
        ("arch: aarch64", "arch: x86_64", 13, "kernels[1].arch", "does not match the release's arm64 flavour"),
        ("version: 6.1.176-1", "version: latest", 11, "kernels[0].version", "is not a Debian version"),
        ("release: 6.1.0-50-cloud-amd64", "release: linux-6.1", 8, "kernels[0].release", "not a Debian kernel release"),
        ("hello: {source: hello.c}", "hello: {source: missing.c}", 3, "programs.hello.source", "no such file"),
        ("clang: 19", "clang: nineteen", 1, "toolchain.clang", "expected int"),
        ("    version: 6.1.176-1\n", "    version: 6.1.176-1\n    flavor: cloud\n", 12, "kernels[0].flavor", "unknown key"),
    ],
)
def test_bad_matrix_names_file_line_and_key(tmp_path: Path, old: str, new: str, line: int, key: str, message: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_matrix(path)
    assert (err.value.path, err.value.line, err.value.key) == (str(path), line, key)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: {key}: ")


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("toolchain:", "programs: {}\ntoolchain:", 1))
    with pytest.raises(ConfigError, match=r"kernels.yaml:\d+: programs: duplicate key"):
        load_matrix(path)
