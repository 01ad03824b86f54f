"""The kernel crawler and the pinned-but-gone error, against Debian's real archive."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import SHARED_CACHE
from hidsbuild.apt import PackageRef, PrivateApt
from hidsbuild.discover import discover, render_yaml
from hidsbuild.errors import HeadersUnavailable
from hidsbuild.kernels import load_matrix


@pytest.fixture(scope="module")
def sid_apt() -> PrivateApt:
    return PrivateApt(SHARED_CACHE / "apt-sid", ["sid"], ["amd64"])


def test_discover_lists_served_kernels_in_kernels_yaml_form(sid_apt: PrivateApt, tmp_path: Path) -> None:
    served = discover(sid_apt)
    assert served and all(s.suite == "sid" and s.arch == "x86_64" for s in served)
    assert all(s.release.endswith("-cloud-amd64") for s in served)
    text = render_yaml(served)
    doc = yaml.safe_load(text)
    (tmp_path / "x.c").write_text("int x;\n")
    (tmp_path / "kernels.yaml").write_text(yaml.safe_dump({
        "toolchain": {"suite": "bookworm", "clang": 19},
        "programs": {"x": {"source": "x.c"}},
        "variants": {"syscall_wrapper": [True], "debug": [False]},
        "kernels": doc["kernels"],
    }))
    matrix = load_matrix(tmp_path / "kernels.yaml")  # what discover prints is a valid kernels list
    assert [k.release for k in matrix.kernels] == [s.release for s in served]


def test_pinned_version_the_archive_no_longer_serves_names_package_and_suite(sid_apt: PrivateApt, tmp_path: Path) -> None:
    ref = PackageRef("linux-headers-6.1.0-1-cloud-amd64", "6.1.4-1", "sid", "amd64")
    with pytest.raises(HeadersUnavailable) as err:
        sid_apt.download([ref], tmp_path)
    message = str(err.value)
    assert "linux-headers-6.1.0-1-cloud-amd64=6.1.4-1" in message and "suite sid" in message
    assert "invoke kernels.discover --suite sid" in message
    assert not list(tmp_path.glob("*.deb"))
