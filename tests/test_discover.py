"""The kernel crawler: signed Packages indexes read directly, real kernels only, kernels.yaml refreshed in place.

Fast tier: real Packages paragraphs saved from Debian's archive (tests/data/discover/), and a
local archive served over HTTP whose InRelease is signed by a key made for the test (Debian's
archive keys cannot sign here; gpgv checks it exactly as it checks theirs). Network tier: the
real archive, and the pinned-but-gone error of apt.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_CACHE

from hidsbuild.apt import PackageRef, PrivateApt
from hidsbuild.archive_index import (
    ArchiveError,
    fetch,
    packages_index,
    packages_paragraphs,
    pool_served,
    verified_release,
)
from hidsbuild.discover import (
    DEFAULT_SUITES,
    Served,
    discover,
    kernels_in,
    newest_served,
    render_yaml,
    write_matrix,
)
from hidsbuild.distros.debian import ARCHIVE, Mirrors, host_mirrors
from hidsbuild.errors import ConfigError, PackageUnavailable
from hidsbuild.kernels import load_matrix

pytestmark = pytest.mark.integration

DATA = ROOT / "tests" / "data" / "discover"
BOOKWORM_SECURITY = (DATA / "bookworm-security_arm64_Packages").read_bytes()
BULLSEYE_SECURITY = (DATA / "bullseye-security_arm64_Packages").read_bytes()
SID = (DATA / "sid_amd64_Packages").read_bytes()


# --- Real Packages data: which packages are kernels --------------------------------------------

def test_metapackages_are_not_kernels_and_versioned_headers_are() -> None:
    served = kernels_in(BOOKWORM_SECURITY, "bookworm-security", "arm64")
    assert [s.release for s in served] == ["6.1.0-57-cloud-arm64", "6.12.115+deb12-cloud-arm64",
                                           "6.12.117+deb12-cloud-arm64"]
    # the fixture does hold the metapackages, and other flavours, that must stay out
    names = {p["Package"] for p in packages_paragraphs(BOOKWORM_SECURITY, ("linux-headers-",))}
    assert {"linux-headers-6.12-cloud-arm64", "linux-headers-cloud-arm64", "linux-headers-6.1.0-57-rt-arm64"} <= names
    assert [s.version for s in served] == ["6.1.192-3", "6.12.115-2~deb12u1", "6.12.117-1~deb12u1"]
    assert all(s.suite == "bookworm-security" and s.arch == "aarch64" and s.image is None for s in served)


def test_backport_abi_names_count_and_the_series_metapackage_does_not() -> None:
    served = kernels_in(BULLSEYE_SECURITY, "bullseye-security", "arm64")
    assert [s.release for s in served] == ["5.10.0-46-cloud-arm64", "6.1.0-0.deb11.52-cloud-arm64"]
    assert "6.1-cloud-arm64" not in {s.release for s in served}


def test_other_flavours_are_asked_for_by_name() -> None:
    rt = kernels_in(BOOKWORM_SECURITY, "bookworm-security", "arm64", "rt")
    assert [s.release for s in rt] == ["6.1.0-57-rt-arm64"]
    assert [s.release for s in kernels_in(BOOKWORM_SECURITY, "bookworm-security", "arm64", "")] == ["6.1.0-57-arm64"]


def test_signed_image_is_named_when_the_unsigned_one_is_not_served() -> None:
    [sid] = kernels_in(SID, "sid", "amd64")
    assert (sid.release, sid.version, sid.image) == (
        "7.2.13+deb14-cloud-amd64", "7.2.13-1", "linux-image-7.2.13+deb14-cloud-amd64"
    )


def test_newest_version_of_a_release_wins_whatever_the_order() -> None:
    """A security suite lists two versions of a package while an update rolls out."""
    paragraph = next(p for p in BOOKWORM_SECURITY.split(b"\n\n")
                     if p.startswith(b"Package: linux-headers-6.1.0-57-cloud-arm64\n"))
    older = paragraph.replace(b"Version: 6.1.192-3", b"Version: 6.1.192-1").replace(b"(= 6.1.192-3)", b"(= 6.1.192-1)")
    assert older != paragraph
    for index in (BOOKWORM_SECURITY + b"\n" + older + b"\n", older + b"\n\n" + BOOKWORM_SECURITY):
        versions = {s.release: s.version for s in kernels_in(index, "bookworm-security", "arm64")}
        assert versions["6.1.0-57-cloud-arm64"] == "6.1.192-3"


def test_newest_keeps_one_kernel_per_suite_and_arch(archive) -> None:
    root, mirrors = archive
    served = kernels_in(BOOKWORM_SECURITY, "bookworm-security", "arm64") + kernels_in(SID, "sid", "amd64")
    for path in {f for s in served for f in (*s.headers_files, *(p for _, p in s.image_files))}:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"deb")
    chosen, notes = newest_served(served, mirrors)
    assert [(s.suite, s.release) for s in chosen] == [("bookworm-security", "6.12.117+deb12-cloud-arm64"),
                                                      ("sid", "7.2.13+deb14-cloud-amd64")]
    assert notes == []


# --- A local signed archive: signature, suite and sha256 checks ---------------------------------

def _gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(["gpg", "--batch", "--homedir", str(home), *args], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two signing keys, each (GNUPGHOME, exported public keyring): one trusted by the tests, one not."""
    out = {}
    for name in ("archive", "stranger"):
        home = tmp_path_factory.mktemp(f"gnupg-{name}")
        home.chmod(0o700)
        _gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.invalid>",
             "rsa2048", "sign", "never")
        keyring = home / f"{name}.gpg"
        keyring.write_bytes(_gpg(home, "--export"))
        out[name] = (home, keyring)
    yield out
    for home, _ in out.values():
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def make_suite(root: Path, suite: str, indexes: dict[str, bytes], signer: Path, codename: str | None = None) -> Path:
    dists = root / "dists" / suite
    for arch, data in indexes.items():
        (dists / f"main/binary-{arch}").mkdir(parents=True)
        (dists / f"main/binary-{arch}/Packages.gz").write_bytes(gzip.compress(data))
    lines = [f"Suite: {codename or suite}", f"Codename: {codename or suite}", "SHA256:"]
    for path in sorted(dists.rglob("Packages*")):
        data = path.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {path.relative_to(dists)}")
    (dists / "Release").write_text("\n".join(lines) + "\n")
    _gpg(signer, "--clearsign", "--output", str(dists / "InRelease"), str(dists / "Release"))
    return dists


@pytest.fixture()
def archive(tmp_path: Path) -> Iterator[tuple[Path, Mirrors]]:
    root = tmp_path / "archive"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield root, Mirrors(url, url)
    server.shutdown()
    server.server_close()


def test_local_signed_archive_is_crawled_concurrently_across_suites(archive, keys) -> None:
    root, mirrors = archive
    home, keyring = keys["archive"]
    make_suite(root, "bookworm-security", {"arm64": BOOKWORM_SECURITY, "amd64": b""}, home)
    make_suite(root, "sid", {"amd64": SID, "arm64": b""}, home)
    served = discover(["sid", "bookworm-security"], ["x86_64", "aarch64"], mirrors=mirrors, keyrings=(keyring,))
    assert [(s.suite, s.arch, s.release) for s in served] == [
        ("bookworm-security", "aarch64", "6.1.0-57-cloud-arm64"),
        ("bookworm-security", "aarch64", "6.12.115+deb12-cloud-arm64"),
        ("bookworm-security", "aarch64", "6.12.117+deb12-cloud-arm64"),
        ("sid", "x86_64", "7.2.13+deb14-cloud-amd64"),
    ]


def test_tampered_packages_index_is_refused(archive, keys) -> None:
    root, mirrors = archive
    dists = make_suite(root, "sid", {"amd64": SID}, keys["archive"][0])
    packages = dists / "main/binary-amd64/Packages.gz"
    packages.write_bytes(gzip.compress(SID.replace(b"Version: 7.2.13-1", b"Version: 7.2.99-1")))
    release = verified_release(mirrors.debian, "sid", (keys["archive"][1],))
    with pytest.raises(ArchiveError, match=r"Packages.gz: sha256 [0-9a-f]{64} .* does not match InRelease's .*refused"):
        packages_index(release, "amd64")


def test_index_signed_by_an_unknown_key_is_refused(archive, keys) -> None:
    root, mirrors = archive
    make_suite(root, "sid", {"amd64": SID}, keys["stranger"][0])
    with pytest.raises(ArchiveError, match=r"dists/sid/InRelease: not signed by an archive key"):
        verified_release(mirrors.debian, "sid", (keys["archive"][1],))


def test_unsigned_text_around_the_signed_part_is_not_read(archive, keys) -> None:
    """Only gpgv's output is parsed: a SHA256 line put before the signed block does not count."""
    root, mirrors = archive
    dists = make_suite(root, "sid", {"amd64": SID}, keys["archive"][0])
    signed = (dists / "InRelease").read_bytes()
    (dists / "InRelease").write_bytes(b"SHA256:\n 00 1 main/binary-amd64/Packages.xz\n\n" + signed)
    try:
        release = verified_release(mirrors.debian, "sid", (keys["archive"][1],))
    except ArchiveError:
        return  # refusing the whole file is as good
    assert "main/binary-amd64/Packages.xz" not in release.sha256


def test_index_of_another_suite_is_refused(archive, keys) -> None:
    """A validly signed InRelease replayed under another suite's name (e.g. an old one) is refused."""
    root, mirrors = archive
    make_suite(root, "trixie-security", {"amd64": SID}, keys["archive"][0], codename="bookworm-security")
    with pytest.raises(ArchiveError, match=r"signed for suite 'bookworm-security', not 'trixie-security'"):
        verified_release(mirrors.debian, "trixie-security", (keys["archive"][1],))


def test_missing_index_names_the_url(archive, keys) -> None:
    _, mirrors = archive
    with pytest.raises(ArchiveError, match=r"cannot fetch http://127\.0\.0\.1:\d+/dists/nosuch/InRelease: HTTP 404"):
        verified_release(mirrors.debian, "nosuch", (keys["archive"][1],))


# --- --newest asks the pool, not only the index ---------------------------------------------------

def _two_sid_kernels() -> bytes:
    """SID's index plus an older 7.2.12 build of the cloud kernel (its headers, -common and image)."""
    older = [p.replace(b"7.2.13+deb14", b"7.2.12+deb14").replace(b"7.2.13-1", b"7.2.12-1") for p in SID.split(b"\n\n")
             if p.startswith((b"Package: linux-headers-7.2.13+deb14-cloud-amd64\n",
                              b"Package: linux-headers-7.2.13+deb14-common\n",
                              b"Package: linux-image-7.2.13+deb14-cloud-amd64\n"))]
    assert len(older) == 3
    return SID.rstrip(b"\n") + b"\n\n" + b"\n\n".join(older) + b"\n"


def _pool(root: Path, release: str, version: str, image: bool = True) -> None:
    names = [f"linux-headers-{release}_{version}_amd64.deb",
             f"linux-headers-{release.split('-cloud')[0]}-common_{version}_all.deb"]
    for name in names:
        (root / "pool/main/l/linux").mkdir(parents=True, exist_ok=True)
        (root / "pool/main/l/linux" / name).write_bytes(b"deb")
    if image:
        (root / "pool/main/l/linux-signed-amd64").mkdir(parents=True, exist_ok=True)
        (root / "pool/main/l/linux-signed-amd64" / f"linux-image-{release}_{version}_amd64.deb").write_bytes(b"deb")


def test_newest_passes_over_a_kernel_whose_pool_files_404(archive, keys) -> None:
    root, mirrors = archive
    make_suite(root, "sid", {"amd64": _two_sid_kernels()}, keys["archive"][0])
    served = discover(["sid"], ["x86_64"], mirrors=mirrors, keyrings=(keys["archive"][1],))
    assert max(served).release == "7.2.13+deb14-cloud-amd64"  # the index alone says so
    _pool(root, "7.2.12+deb14-cloud-amd64", "7.2.12-1")
    _pool(root, "7.2.13+deb14-cloud-amd64", "7.2.13-1", image=False)  # headers there, no image to boot
    chosen, notes = newest_served(served, mirrors)
    assert [(s.release, s.version, s.image) for s in chosen] == [
        ("7.2.12+deb14-cloud-amd64", "7.2.12-1", "linux-image-7.2.12+deb14-cloud-amd64")]
    assert notes == ["sid/x86_64: passed over 7.2.13+deb14-cloud-amd64 7.2.13-1: the pool does not serve "
                     "linux-image-7.2.13+deb14-cloud-amd64_7.2.13-1_amd64.deb"]
    _pool(root, "7.2.13+deb14-cloud-amd64", "7.2.13-1")
    assert [s.release for s in newest_served(served, mirrors)[0]] == ["7.2.13+deb14-cloud-amd64"]
    shutil.rmtree(root / "pool")
    assert newest_served(served, mirrors) == ([], [
        "sid/x86_64: passed over 7.2.13+deb14-cloud-amd64 7.2.13-1: the pool does not serve "
        "linux-headers-7.2.13+deb14-cloud-amd64_7.2.13-1_amd64.deb, linux-headers-7.2.13+deb14-common_7.2.13-1_all.deb",
        "sid/x86_64: passed over 7.2.12+deb14-cloud-amd64 7.2.12-1: the pool does not serve "
        "linux-headers-7.2.12+deb14-cloud-amd64_7.2.12-1_amd64.deb, linux-headers-7.2.12+deb14-common_7.2.12-1_all.deb",
        "sid/x86_64: no kernel whose packages the pool serves"])


def test_real_archive_newest_is_a_kernel_the_pool_serves() -> None:
    """bullseye-security's index names linux-6.1 backports whose pool files 404 (kernels.yaml's
    header says so): --newest must pass over them, and every kernel it passes over must really 404."""
    served = discover(["bullseye-security"], ["x86_64", "aarch64"])
    chosen, notes = newest_served(served)
    mirror = host_mirrors().security
    for s in chosen:
        assert all(pool_served([f"{mirror}/{f}" for f in s.headers_files]).values())
    passed = [s for s in served if any(f"passed over {s.release} {s.version}:" in n for n in notes)]
    assert passed, notes  # the archive's state when this was written: the 6.1 backports 404
    for s in passed:
        files = (*s.headers_files, *(p for _, p in s.image_files))
        assert not all(pool_served([f"{mirror}/{f}" for f in files]).values())
    by_arch = {s.arch: s for s in chosen}
    if "x86_64" in by_arch:
        assert by_arch["x86_64"].release.startswith("5.10.0-")


# --- --write: the matrix refreshed by editing its text -----------------------------------------

def _project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "bpf", tmp_path / "bpf")
    shutil.copy(DATA / "kernels.yaml", tmp_path / "kernels.yaml")  # a fixed matrix, not the live default
    return tmp_path / "kernels.yaml"


def _served_now(matrix_path: Path) -> list[Served]:
    """What the archive serves in this scenario: the pinned kernels, except that bullseye-security's
    moved on (5.10.0-46 gone, 5.10.0-47 new) and trixie's got a new revision."""
    served = []
    for k in load_matrix(matrix_path).kernels:
        if k.release == "5.10.0-46-cloud-amd64":
            continue
        version = "6.12.117-2" if k.suite == "trixie" and k.arch == "x86_64" else k.version
        served.append(Served(k.suite, k.arch, k.release, version, k.image if k.suite == "sid" else None))
    served += [Served("bullseye-security", "x86_64", "5.10.0-47-cloud-amd64", "5.10.263-1"),
               Served("sid", "aarch64", "7.2.13+deb14-cloud-arm64", "7.2.13-1", "linux-image-7.2.13+deb14-cloud-arm64")]
    return sorted(served)


def test_write_keeps_comments_adds_updates_and_reports_vanished(tmp_path: Path) -> None:
    path = _project(tmp_path)
    before = path.read_text()
    served = _served_now(path)
    report = write_matrix(path, served, served, DEFAULT_SUITES, ["x86_64", "aarch64"])
    after = path.read_text()

    assert [(s.release, s.arch) for s in report.added] == [("5.10.0-47-cloud-amd64", "x86_64"),
                                                           ("7.2.13+deb14-cloud-arm64", "aarch64")]
    assert [(s.release, old, s.version) for s, old in report.updated] == [
        ("6.12.117+deb13-cloud-amd64", "6.12.117-1", "6.12.117-2")]
    assert report.vanished == ["5.10.0-46-cloud-amd64 (x86_64) in bullseye-security, 5.10.262-1"] and not report.pruned
    comments = [line for line in before.splitlines() if "#" in line]
    assert all(line in after.splitlines() for line in comments), "a comment was lost"
    # two items of 4 lines, one image line, a `# suite / arch` comment before each
    assert after.count("\n") == before.count("\n") + 11
    matrix = load_matrix(path)
    kernels = {(k.release, k.arch): k for k in matrix.kernels}
    assert kernels[("6.12.117+deb13-cloud-amd64", "x86_64")].version == "6.12.117-2"
    assert kernels[("6.12.117+deb13-cloud-arm64", "aarch64")].version == "6.12.117-1"  # only the x86_64 one moved
    assert kernels[("5.10.0-46-cloud-amd64", "x86_64")].version == "5.10.262-1"  # vanished, kept
    assert kernels[("7.2.13+deb14-cloud-arm64", "aarch64")].image == "linux-image-7.2.13+deb14-cloud-arm64"
    assert [k.release for k in matrix.kernels][-2:] == ["5.10.0-47-cloud-amd64", "7.2.13+deb14-cloud-arm64"]
    assert before.split("kernels:")[0] == after.split("kernels:")[0]  # toolchain, programs, variants untouched
    assert before.split("\ncore:")[1] == after.split("\ncore:")[1]

    again = write_matrix(path, served, served, DEFAULT_SUITES, ["x86_64", "aarch64"])
    assert not (again.added or again.updated) and path.read_text() == after


def test_write_prune_removes_vanished_but_not_a_core_kernel(tmp_path: Path) -> None:
    path = _project(tmp_path)
    served = [s for s in _served_now(path) if s.release != "6.12.117+deb13-cloud-arm64"]
    report = write_matrix(path, served, [], DEFAULT_SUITES, ["x86_64", "aarch64"], prune=True)
    assert report.pruned == ["5.10.0-46-cloud-amd64 (x86_64) in bullseye-security, 5.10.262-1"]
    assert report.kept_for_core == ["6.12.117+deb13-cloud-arm64 (aarch64) in trixie, 6.12.117-1"]
    releases = [k.release for k in load_matrix(path).kernels]
    assert "5.10.0-46-cloud-amd64" not in releases and "6.12.117+deb13-cloud-arm64" in releases
    assert "5.10.262-1" not in path.read_text()


def test_write_only_judges_the_suites_it_crawled(tmp_path: Path) -> None:
    path = _project(tmp_path)
    before = path.read_text()
    report = write_matrix(path, [], [], ["sid"], ["x86_64"], prune=True)
    assert report.vanished == ["7.2.13+deb14-cloud-amd64 (x86_64) in sid, 7.2.13-1"]
    assert report.pruned == report.vanished and before != path.read_text()
    assert len(load_matrix(path).kernels) == 7


def test_write_refuses_a_result_that_would_not_parse_and_leaves_the_file(tmp_path: Path) -> None:
    path = _project(tmp_path)
    before = path.read_text()
    broken = [Served("sid", "x86_64", "7.3.1+DEB14-cloud-amd64", "7.3.1-1")]  # upper case: not a release
    with pytest.raises(ConfigError, match=r"kernels.yaml:\d+: kernels\[8\]\.release: "
                                          r"the refreshed matrix would not parse, left as it was"):
        write_matrix(path, broken, broken, ["sid"], ["x86_64"])
    assert path.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kernels.yaml")]


# --- The real archive (network) ------------------------------------------------------------------

def test_real_archive_sid_and_bookworm_security(tmp_path: Path) -> None:
    served = discover(["sid", "bookworm-security"], ["x86_64", "aarch64"])
    assert {(s.suite, s.arch) for s in served} == {
        (su, a) for su in ("sid", "bookworm-security") for a in ("x86_64", "aarch64")
    }
    assert all(re.fullmatch(r"\d+\.\d+\.\d+[0-9a-z.+-]*-cloud-(amd64|arm64)", s.release) for s in served)
    # the metapackages are there in the raw index, and not in the answer
    mirrors = host_mirrors()
    index = packages_index(verified_release(mirrors.security, "bookworm-security", ARCHIVE.keyrings()), "arm64")
    names = {p["Package"] for p in packages_paragraphs(index, ("linux-headers-",))}
    assert "linux-headers-cloud-arm64" in names
    assert any(re.fullmatch(r"linux-headers-\d+\.\d+-cloud-arm64", n) for n in names)
    aarch64_security = [s for s in served if s.suite == "bookworm-security" and s.arch == "aarch64"]
    assert {f"linux-headers-{s.release}" for s in aarch64_security} <= names
    assert not any(re.fullmatch(r"\d+\.\d+-cloud-arm64", s.release) for s in served)


def test_real_archive_cli_write_on_a_copy_of_kernels_yaml(tmp_path: Path) -> None:
    path = _project(tmp_path)
    before = path.read_text()
    proc = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "kernels.discover", "--newest",
                           "--suite", "trixie", "--suite", "sid", "--write", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    after = path.read_text()
    assert all(line in after.splitlines() for line in before.splitlines() if "#" in line)
    matrix = load_matrix(path)
    assert len(matrix.kernels) >= 8 and "Traceback" not in proc.stderr


def test_pinned_version_the_archive_no_longer_serves_names_package_and_suite(tmp_path: Path) -> None:
    apt = PrivateApt(SHARED_CACHE / "apt-sid", ["sid"], ["amd64"])
    ref = PackageRef("linux-headers-6.1.0-1-cloud-amd64", "6.1.4-1", "sid", "amd64")
    with pytest.raises(PackageUnavailable) as err:
        apt.download([ref], tmp_path)
    message = str(err.value)
    assert "linux-headers-6.1.0-1-cloud-amd64=6.1.4-1" in message and "suite sid" in message
    assert "invoke kernels.discover --suite sid" in message
    assert not list(tmp_path.glob("*.deb"))


def test_render_yaml_is_a_valid_kernels_list(tmp_path: Path) -> None:
    served = kernels_in(BOOKWORM_SECURITY, "bookworm-security", "arm64") + kernels_in(SID, "sid", "amd64")
    (tmp_path / "x.c").write_text("int x;\n")
    head = ("toolchain: {suite: bookworm, clang: 19}\nprograms:\n  x: {source: x.c}\n"
            "variants:\n  syscall_wrapper: [true]\n  debug: [false]\n")
    (tmp_path / "kernels.yaml").write_text(head + render_yaml(served))
    matrix = load_matrix(tmp_path / "kernels.yaml")
    assert [k.release for k in matrix.kernels] == [s.release for s in served]
    assert matrix.kernels[-1].image == "linux-image-7.2.13+deb14-cloud-amd64"


def test_fetch_names_an_unreachable_url() -> None:
    with pytest.raises(ArchiveError, match=r"cannot fetch http://127\.0\.0\.1:9/"):
        fetch("http://127.0.0.1:9/dists/sid/InRelease")
