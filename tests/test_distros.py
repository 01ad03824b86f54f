"""Distros as modules (fast tier: no docker, root or network).

kernels.yaml's `distro:` key picks the module; `local` takes header trees or .deb files from a
directory the user names. The trees here are small but real in layout (what a custom kernel's
`make modules_prepare` and Ubuntu's header packages leave); the .debs are built with dpkg-deb.
The full compile of a local kernel is tests/test_distros_build.py (integration tier).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hids_bytecode.arches import ARCHES

from hidsbuild.apt import PrivateApt
from hidsbuild.distros import DISTROS, Distro
from hidsbuild.distros.debian import DEBIAN
from hidsbuild.errors import ConfigError, PackageUnavailable
from hidsbuild.headers import HeadersCache
from hidsbuild.kernels import load_matrix
from hidsbuild.verify.images import KernelImage, fetch_image, image_refs
from hidsbuild.verify.vm import qemu_command

HEAD = """\
toolchain: {suite: bookworm, clang: 19}
programs:
  hello: {source: hello.c}
variants:
  syscall_wrapper: [true]
  debug: [false]
kernels:
"""
DEBIAN_KERNEL = """\
  - release: 6.1.0-50-cloud-amd64
    arch: x86_64
    suite: bookworm
    version: 6.1.176-1
"""


def write(project: Path, kernels: str) -> Path:
    project.mkdir(parents=True, exist_ok=True)
    (project / "hello.c").write_text("int x;\n")
    path = project / "kernels.yaml"
    path.write_text(HEAD + kernels)
    return path


def local_kernel(headers: str, release: str = "6.1.0-custom1", extra: str = "") -> str:
    return (f"  - distro: local\n    release: {release}\n    arch: x86_64\n    version: 6.1.176\n"
            f"    headers: {headers}\n{extra}")


def custom_tree(root: Path, src_arch: str = "x86") -> Path:
    """The files a compile reads from a custom kernel's merged tree, where they would be."""
    for rel, text in {
        ".config": "CONFIG_BPF_SYSCALL=y\nCONFIG_FTRACE_SYSCALLS=y\n# CONFIG_DEBUG_INFO_BTF is not set\n",
        "include/linux/kconfig.h": "#define __ARG_PLACEHOLDER_1 0,\n",
        "include/generated/autoconf.h": "#define CONFIG_BPF_SYSCALL 1\n",
        f"arch/{src_arch}/include/asm/ptrace.h": "struct pt_regs { unsigned long di; };\n",
        f"arch/{src_arch}/include/generated/asm/types.h": "/* generated */\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_matrix(path)
    return str(err.value)


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# --- the registry and kernels.yaml ---------------------------------------------------------------

def test_every_registered_distro_implements_the_protocol() -> None:
    assert set(DISTROS) == {"debian", "local"}
    for name, distro in DISTROS.items():
        assert isinstance(distro, Distro) and distro.name == name
        assert not {"distro", "release", "arch", "cflags"} & distro.keys  # those are kernels.py's


def test_debian_is_the_default_and_naming_it_changes_nothing(tmp_path: Path) -> None:
    implicit = load_matrix(write(tmp_path / "a", DEBIAN_KERNEL)).kernels[0]
    named = "  - distro: debian\n" + DEBIAN_KERNEL.replace("  - ", "    ", 1)
    explicit = load_matrix(write(tmp_path / "b", named)).kernels[0]
    assert implicit == explicit and implicit.distro == "debian" and implicit.packaging is DEBIAN
    assert implicit.headers == ("linux-headers-6.1.0-50-cloud-amd64", "linux-headers-6.1.0-50-common")
    assert (implicit.upstream, implicit.flavour, implicit.image) == ("6.1.176", "cloud-amd64",
                                                                      "linux-image-6.1.0-50-cloud-amd64-unsigned")
    assert [r.name for r in image_refs(implicit)] == ["linux-image-6.1.0-50-cloud-amd64-unsigned",
                                                      "linux-image-6.1.0-50-cloud-amd64"]


def test_unknown_distro_is_a_file_line_error(tmp_path: Path) -> None:
    path = write(tmp_path, DEBIAN_KERNEL + "  - distro: ubuntu\n    release: 6.8.0-45-generic\n    arch: x86_64\n")
    assert error(path) == (f"{path}:{line_of(path, 'ubuntu')}: kernels[1].distro: unknown distro 'ubuntu' "
                           "(expected one of debian, local)")


def test_local_kernel_from_a_tree_inside_the_repository(tmp_path: Path) -> None:
    custom_tree(tmp_path / "headers" / "custom")
    kernel = load_matrix(write(tmp_path, local_kernel("headers/custom"))).kernels[0]
    assert (kernel.distro, kernel.release, kernel.arch, kernel.version, kernel.upstream) == \
        ("local", "6.1.0-custom1", "x86_64", "6.1.176", "6.1.176")
    assert kernel.headers == (str(tmp_path / "headers" / "custom"),)
    assert (kernel.suite, kernel.image, kernel.flavour) == ("", "", "")
    assert image_refs(kernel) == []  # no archive serves its image: it cannot be booted


def test_local_kernel_has_no_image_to_boot(tmp_path: Path) -> None:
    custom_tree(tmp_path / "headers" / "custom")
    kernel = load_matrix(write(tmp_path, local_kernel("headers/custom"))).kernels[0]
    with pytest.raises(PackageUnavailable, match=r"^6\.1\.0-custom1: no archive serves an image of this local kernel"):
        fetch_image(PrivateApt(tmp_path / "apt", [], []), kernel, tmp_path)  # before any apt call
    assert not (tmp_path / "apt").exists()


def test_local_kernel_from_an_absolute_path_outside(tmp_path: Path) -> None:
    tree = custom_tree(tmp_path / "elsewhere" / "linux")
    kernel = load_matrix(write(tmp_path / "repo", local_kernel(str(tree)))).kernels[0]
    assert kernel.headers == (str(tree),)


@pytest.mark.parametrize(("entry", "key", "message"), [
    (local_kernel("headers/custom", extra="    suite: bookworm\n"), "suite",
     "unknown key suite (expected one of arch, cflags, distro, headers, release, version)"),
    (local_kernel("headers/nosuch"), "headers", "no such directory"),
    (local_kernel("headers"), "headers", "holds no .deb files and is not a x86_64 kernel header tree (no include/"),
    (local_kernel("../outside"), "headers", "resolves outside the repository"),
    (local_kernel("headers/custom", release="6.1.0/../x"), "release", "is not a kernel release as uname -r prints it"),
    (local_kernel("headers/custom").replace("6.1.176", "6.1.176-1"), "version",
     "'6.1.176-1' is not an upstream kernel version (e.g. 6.1.176)"),
    (local_kernel("'-rf'"), "headers", "is not a directory path"),
])
def test_local_kernel_is_checked_strictly(tmp_path: Path, entry: str, key: str, message: str) -> None:
    custom_tree(tmp_path / "repo" / "headers" / "custom")
    (tmp_path / "outside").mkdir()
    path = write(tmp_path / "repo", entry)
    text = error(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: kernels\[0\]\.{key}: ", text), text
    assert message in text
    assert text.startswith(f"{path}:{line_of(path, f'    {key}:' if key != 'release' else 'release:')}:")


def test_local_tree_must_be_of_the_kernels_arch(tmp_path: Path) -> None:
    custom_tree(tmp_path / "headers" / "custom", src_arch="arm64")
    assert "no arch/x86/include/" in error(write(tmp_path, local_kernel("headers/custom")))


# --- local header trees in the headers cache -----------------------------------------------------

def test_local_tree_is_copied_recorded_and_identified_by_content(tmp_path: Path) -> None:
    source = custom_tree(tmp_path / "repo" / "headers" / "custom")
    kernel = load_matrix(write(tmp_path / "repo", local_kernel("headers/custom"))).kernels[0]
    cache = HeadersCache(tmp_path / "cache", None)  # no archive access: none is needed
    assert cache.missing(kernel) == [str(source)]
    cache.fetch([kernel])
    described = cache.describe(kernel)
    tree = "0/usr/src/linux-headers-6.1.0-custom1"
    assert (described.common, described.flavour) == (tree, tree)
    (root,) = described.packages
    assert (root / tree[2:] / "include/linux/kconfig.h").read_text() == "#define __ARG_PLACEHOLDER_1 0,\n"
    assert described.kernel_config() == {"CONFIG_BPF_SYSCALL": "y", "CONFIG_FTRACE_SYSCALLS": "y"}
    (record,) = cache.packages(kernel)
    assert record["distro"] == "local" and record["source"] == str(source)
    assert described.identity == f"tree:{record['sha256']}" and re.fullmatch(r"[0-9a-f]{64}", record["sha256"])
    assert not HeadersCache(tmp_path / "cache", None).missing(kernel)  # cached: no copy next time

    # An edit in the user's tree is a new entry with a new identity, so objects built before are not reused.
    (source / "include/linux/kconfig.h").write_text("#define __ARG_PLACEHOLDER_1 0, /* edited */\n")
    again = HeadersCache(tmp_path / "cache", None)
    assert again.missing(kernel)
    again.fetch([kernel])
    assert again.describe(kernel).identity not in (described.identity, "")

    # The cached copy is checked like a Debian tree: a file changed in the cache is discarded.
    copy = again.describe(kernel).packages[0] / "usr/src/linux-headers-6.1.0-custom1/.config"
    copy.write_text("CONFIG_BPF_SYSCALL=n\n")
    again.check([kernel])
    assert again.missing(kernel)


def _deb(work: Path, package: str, files: dict[str, str]) -> None:
    root = work / package
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(f"Package: {package}\nVersion: 6.8.0-45.45\nArchitecture: amd64\n"
                                         "Maintainer: test <test@example.invalid>\nDescription: headers\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(work / "debs" / f"{package}.deb")],
                   check=True, capture_output=True)


def test_local_debs_in_ubuntus_two_tree_layout(tmp_path: Path) -> None:
    """Ubuntu ships linux-headers-<abi> (shared) and linux-headers-<abi>-generic (.config, generated)."""
    work = tmp_path / "work"
    (work / "debs").mkdir(parents=True)
    _deb(work, "linux-headers-6.8.0-45", {"usr/src/linux-headers-6.8.0-45/include/linux/kconfig.h": "/* */\n",
                                          "usr/src/linux-headers-6.8.0-45/arch/x86/include/asm/ptrace.h": "/* */\n"})
    _deb(work, "linux-headers-6.8.0-45-generic", {
        "usr/src/linux-headers-6.8.0-45-generic/.config": "CONFIG_BPF_SYSCALL=y\n",
        "usr/src/linux-headers-6.8.0-45-generic/include/generated/autoconf.h": "/* */\n",
        "usr/src/linux-headers-6.8.0-45-generic/arch/x86/include/generated/asm/types.h": "/* */\n"})
    kernel = load_matrix(write(tmp_path, local_kernel(str(work / "debs"), release="6.8.0-45-generic"))).kernels[0]
    cache = HeadersCache(tmp_path / "cache", None)
    cache.fetch([kernel])
    described = cache.describe(kernel)
    assert (described.common, described.flavour) == ("0/usr/src/linux-headers-6.8.0-45",
                                                     "0/usr/src/linux-headers-6.8.0-45-generic")
    assert described.kernel_config() == {"CONFIG_BPF_SYSCALL": "y"}


def test_debs_without_the_release_tree_are_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "debs").mkdir(parents=True)
    _deb(work, "linux-headers-6.8.0-45", {"usr/src/linux-headers-6.8.0-45/include/linux/kconfig.h": "/* */\n"})
    kernel = load_matrix(write(tmp_path, local_kernel(str(work / "debs"), release="6.8.0-46-generic"))).kernels[0]
    with pytest.raises(Exception, match=r"hold no /usr/src/linux-headers-6\.8\.0-46-generic tree"):
        HeadersCache(tmp_path / "cache", None).fetch([kernel])
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("local_")]


def test_debian_layout_needs_its_flavour_and_common_trees(tmp_path: Path) -> None:
    kernel = load_matrix(write(tmp_path / "p", DEBIAN_KERNEL)).kernels[0]
    flavour, common = tmp_path / "a", tmp_path / "b"
    (flavour / "usr/src/linux-headers-6.1.0-50-cloud-amd64").mkdir(parents=True)
    assert DEBIAN.header_trees(kernel, [flavour, common]) is None
    (common / "usr/src/linux-headers-6.1.0-50-common").mkdir(parents=True)
    assert DEBIAN.header_trees(kernel, [flavour, common]) == ("1/usr/src/linux-headers-6.1.0-50-common",
                                                              "0/usr/src/linux-headers-6.1.0-50-cloud-amd64")


# --- one architecture table ----------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(ARCHES))
def test_the_vm_is_driven_by_the_arch_row(arch: str, tmp_path: Path) -> None:
    row = ARCHES[arch]
    cmd = qemu_command(arch, Path("/k"), Path("/i"))
    assert cmd[:6] == [row.qemu, "-M", row.qemu_machine, "-cpu", row.qemu_cpu, "-accel"]
    assert f"console={row.console}" in cmd[cmd.index("-append") + 1]
    config = tmp_path / "config"
    config.write_text("CONFIG_BPF_SYSCALL=y\n")
    missing = KernelImage(Path("/k"), config).missing_builtins(arch)
    assert f"{row.console_config}=unset" in missing and "CONFIG_BPF_SYSCALL=y" not in missing


def test_no_build_module_keeps_its_own_arch_table() -> None:
    """Per-arch facts live in hids_bytecode.arches (and a distro's arch names in its module)."""
    build = Path(__file__).resolve().parent.parent / "hidsbuild"
    facts = re.compile(r"qemu-system-|x86_64-linux-gnu|ttyAMA0|__x64_sys_|\"amd64\"|'amd64'")
    offenders = [str(p.relative_to(build)) for p in sorted(build.rglob("*.py"))
                 if p.parent.name != "distros" and facts.search(p.read_text())]
    assert offenders == []
