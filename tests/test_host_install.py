"""Issue 14, requirement 6: the documented host install works on Debian 12 (README, "On a host").

The system pip refuses to install into /usr (PEP 668), so the wheel goes into its own venv and the
command is linked onto root's PATH. Here the venv and the link live in a tmp dir instead of
/opt and /usr/local/sbin, and the trusted keys in a tmp dir named by --trusted-keys instead of
/etc/hids-bytecode/keys (writing there would make every other loader test on this shared host
require a signature); everything else is the documented path: the system python3, a real bundled
and signed wheel, the installed console script.
"""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest
from test_signing import build_dir_from_data, invoke, make_loader_data, trust_dir

pytestmark = pytest.mark.integration

SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def signed_dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """dist/ holding one signed wheel of objects built for this kernel, and the public key."""
    tmp = tmp_path_factory.mktemp("host-install")
    assert invoke("keys.generate", "--out", str(tmp / "keys"), "--name", "fleet").returncode == 0
    build = build_dir_from_data(make_loader_data(tmp / "loader"), tmp / "build")
    proc = invoke("bundle", "--build-dir", str(build), "--dist", str(tmp / "dist"),
                  "--sign-key", str(tmp / "keys" / "fleet.key"))
    assert proc.returncode == 0, proc.stderr
    return tmp / "dist", tmp / "keys" / "fleet.pub"


def _host_env() -> dict[str, str]:
    """root's environment on a host: nothing of this checkout's loader or data leaks in."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "HIDS_BYTECODE_DATA", "VIRTUAL_ENV", "PYTHONHOME")}


def test_system_pip_is_externally_managed() -> None:
    """Why the README does not say `pip install`: Debian 12 marks its python externally managed."""
    markers = glob.glob("/usr/lib/python3*/EXTERNALLY-MANAGED")
    if not markers:
        pytest.skip("this host's python is not marked externally managed (not Debian >= 12)")
    assert "[externally-managed]" in Path(markers[0]).read_text()


def test_venv_install_runs_the_command_with_trusted_keys(signed_dist: tuple[Path, Path], tmp_path: Path) -> None:
    dist, pub = signed_dist
    (wheel,) = dist.glob("*.whl")
    venv, sbin = tmp_path / "opt" / "hids-bytecode", tmp_path / "sbin"
    env = _host_env()
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--no-cache-dir", str(wheel)],
                         capture_output=True, text=True, env=env, check=False, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    sbin.mkdir()
    (sbin / "hids-bytecode").symlink_to(venv / "bin" / "hids-bytecode")
    command = str(sbin / "hids-bytecode")

    version = subprocess.run([command, "--version"], capture_output=True, text=True, env=env, check=False)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"hids-bytecode {wheel.name.split('-')[1]} (source ")

    keys = trust_dir(tmp_path / "keys", pub)
    explain = subprocess.run([command, "--trusted-keys", str(keys), "--require-signature", "select", "--explain"],
                             capture_output=True, text=True, env=env, check=False)
    assert explain.returncode == 0, explain.stderr
    assert "manifest: verified, signed by fleet.pub (sha256 " in explain.stdout
    site = next(venv.glob("lib/python3*/site-packages"))
    assert f"mini: exact mini/{os.uname().release}/" in explain.stdout  # from the installed package's data
    assert (site / "hids_bytecode" / "data" / "manifest.json.sig").is_file()
    licenses = list(site.glob("hids_bytecode-*.dist-info/licenses/LICENSE"))
    assert len(licenses) == 1

    # The installed manifest, tampered after install, is refused by the installed command.
    manifest = site / "hids_bytecode" / "data" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"schema": 1', b'"schema": 1 '))
    refused = subprocess.run([command, "--trusted-keys", str(keys), "select"], capture_output=True, text=True,
                             env=env, check=False)
    assert refused.returncode == 31 and "refused" in refused.stderr, refused.stderr
