"""kernels.yaml is refused before any work, with the file, line and key named."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hidsbuild.errors import ConfigError
from hidsbuild.kernels import load_matrix

pytestmark = pytest.mark.integration

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
        ("    version: 6.1.176-1\n", "    version: 6.1.176-1\n    flavor: cloud\n", 12, "kernels[0].flavor",
         "unknown key"),
    ],
)
def test_bad_matrix_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, line: int, key: str, message: str
) -> None:
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


# --- The malformed corpus through the real CLI -------------------------------------------------

BAD = ROOT / "tests/data/bad_kernels"
_EXPECT = re.compile(rb"# expect: (?P<line>\d+): (?P<key>\S+): (?P<reason>.+?) -- ")


def _expectation(path: Path) -> tuple[int, str, str]:
    match = _EXPECT.match(path.read_bytes())
    assert match, f"{path.name}: first line must be '# expect: LINE: KEY: REASON -- what'"
    return int(match["line"]), match["key"].decode(), match["reason"].decode()


def test_corpus_has_the_kinds_the_issue_names() -> None:
    names = {p.stem for p in BAD.glob("*.yaml")}
    assert len(names) >= 25
    assert {"suite_newline_unsigned_source", "headers_apt_option", "source_dotdot_escape", "invalid_utf8",
            "control_character", "complex_key_mapping", "scalar_kernel_item", "misspelled_suite", "boolean_yes",
            "duplicate_kernel", "alias_bomb", "integer_key"} <= names


@pytest.mark.parametrize("bad", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_malformed_matrix_exits_2_with_file_line_key_and_writes_nothing(bad: Path, tmp_path: Path) -> None:
    line, key, reason = _expectation(bad)
    build, cache = tmp_path / "build", tmp_path / "cache"
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/invoke"), "--search-root", str(ROOT), "build-all", "--matrix", str(bad),
         "--build-dir", str(build), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    prefix = f"error: {bad}:{line}: {key}: "
    assert proc.stderr.startswith(prefix), f"expected {prefix!r}, got {proc.stderr!r}"
    assert reason in proc.stderr.splitlines()[0]
    assert not build.exists() and not cache.exists()
    assert list(tmp_path.iterdir()) == []


# --- Linear checks -------------------------------------------------------------------------------

def test_sixty_thousand_kernels_parse_and_a_late_duplicate_is_found_at_its_line(tmp_path: Path) -> None:
    """60k kernels parse (quadratic checks took minutes here); the time itself is for invoke bench."""
    count = 60_000
    lines = GOOD.split("kernels:\n")[0].splitlines() + ["kernels:"]
    for i in range(count):
        lines += [f"  - release: 6.1.0-{i}-cloud-amd64", "    arch: x86_64", "    suite: bookworm",
                  "    version: 6.1.176-1"]
    path = write(tmp_path, "\n".join(lines) + "\n")
    assert len(load_matrix(path).kernels) == count
    duplicate_line = len(lines) + 1
    lines += ["  - release: 6.1.0-59998-cloud-amd64", "    arch: x86_64", "    suite: sid", "    version: 6.1.176-1"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        load_matrix(path)
    assert (err.value.line, err.value.key) == (duplicate_line, f"kernels[{count}].release")
    assert "duplicate kernel 6.1.0-59998-cloud-amd64 (x86_64)" in str(err.value)


# --- What is allowed stays allowed -----------------------------------------------------------------

def test_allowed_cflags_epoch_versions_and_in_repo_symlinks_parse(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src/real.c").write_text("int x;\n")
    (tmp_path / "link.c").symlink_to("src/real.c")
    text = GOOD.replace("source: hello.c", "source: link.c").replace(
        "version: 6.12.117-1", "version: 1:6.12.117-1~bpo12+1")
    text += ("    cflags: [-DFOO, -DBAR=1, -DV=6.1.0-x, -UBAZ, -Wall, -Wno-unused-variable, -Werror=format, "
             "-Wframe-larger-than=512]\n")
    matrix = load_matrix(write(tmp_path, text))
    assert matrix.programs[0].source == "link.c"
    arm = matrix.kernels[1]
    assert arm.upstream == "6.12.117" and len(arm.cflags) == 8


def test_every_error_names_a_line(tmp_path: Path) -> None:
    """A scalar where a mapping belongs still gets the line of the item, not just the file."""
    path = write(tmp_path, GOOD.replace("programs:\n  hello: {source: hello.c}", "programs:\n  hello: hello.c"))
    with pytest.raises(ConfigError) as err:
        load_matrix(path)
    assert (err.value.line, err.value.key) == (3, "programs.hello")
