"""Fast tier (no docker, no root, no network): the provenance statement names each header input
the way its distro can be found again: Debian packages by package URL, a user's header tree
(distros.local) by its directory and record digest, never as a Debian package."""

from __future__ import annotations

from hidsbuild.provenance import statement

INPUTS = {
    "matrix": {"path": "kernels.yaml", "sha256": "aa" * 32},
    "toolchain": {"suite": "bookworm", "clang": 19, "id": "bb" * 32,
                  "packages": {"clang-19": "1:19.1.7-3~deb12u1"}},
    "headers": [
        {"name": "linux-headers-6.1.0-50-cloud-amd64", "version": "6.1.176-1", "arch": "amd64",
         "suite": "bookworm-security", "filename": "pool/main/l/linux/x.deb", "size": 10, "sha256": "cc" * 32},
        {"name": "linux-headers-6.1.0-custom1", "version": "6.1.176", "arch": "amd64", "distro": "local",
         "source": "/srv/kernels/custom1", "sha256": "dd" * 32},
    ],
    "sources": {"file": "ee" * 32},
}
GIT = {"commit": "f" * 40, "dirty": False}


def _deps() -> list[dict]:
    doc = statement("x86_64", [], {}, INPUTS, GIT, "https://example.invalid/repo", environ={})
    return [d for d in doc["predicate"]["buildDefinition"]["resolvedDependencies"]
            if d.get("annotations", {}).get("role") == "kernel headers"]


def test_debian_headers_are_named_by_package_url() -> None:
    debian = _deps()[0]
    assert debian["uri"] == "pkg:deb/debian/linux-headers-6.1.0-50-cloud-amd64@6.1.176-1?arch=amd64"
    assert debian["digest"] == {"sha256": "cc" * 32}
    assert debian["annotations"]["suite"] == "bookworm-security"


def test_a_local_tree_is_named_by_its_directory_not_as_a_debian_package() -> None:
    local = _deps()[1]
    assert "uri" not in local
    assert local["name"] == "linux-headers-6.1.0-custom1 from /srv/kernels/custom1"
    assert local["digest"] == {"sha256": "dd" * 32}
    assert local["annotations"] == {"role": "kernel headers", "distro": "local", "version": "6.1.176",
                                    "arch": "amd64"}
