"""Issue 14: signed and attested wheels; a host loads only what a trusted build key signed.

Real things throughout: wheels bundled by `invoke bundle` from objects compiled for this kernel
(conftest_loader), keys made by `invoke keys.generate`, the system libcrypto in the loader, the
`openssl` CLI as the independent verifier, the kernel (strace shows whether a bpf() call
happened), and, for provenance, a real docker build of the test project (conftest.built_project).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import ROOT, make_loader_data  # noqa: E402 (after register_assert_rewrite)
from hids_bytecode.errors import EXIT_CODES  # noqa: E402

pytestmark = pytest.mark.integration

INVOKE = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
PIN_ROOT = f"/sys/fs/bpf/hids-test-signing-{os.getpid()}"
# Synthetic inputs for the fast wheels; the real ones come from a docker build (test_provenance_*).
INPUTS = {"matrix": {"path": "kernels.yaml", "sha256": "1" * 64},
          "toolchain": {"suite": "bookworm", "clang": 19, "id": "2" * 64, "packages": {"clang-19": "1:19.1.7-3"}},
          "headers": [{"name": "linux-headers-test", "version": "1.0-1", "arch": "amd64", "suite": "bookworm",
                       "filename": "pool/main/l/linux/linux-headers-test_1.0-1_amd64.deb", "size": 10,
                       "sha256": "3" * 64}],
          "sources": {}}


def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*INVOKE, *args], capture_output=True, text=True, cwd=ROOT, check=False,
                          env={**os.environ, **(env or {})}, timeout=300)


def build_dir_from_data(data: Path, dest: Path, inputs: dict[str, Any] | None = INPUTS) -> Path:
    """A build dir (index.json, objects/, sources/) holding the objects of a loader data dir."""
    entries = json.loads((data / "manifest.json").read_text())["objects"]
    for sub in ("objects", "sources"):
        shutil.copytree(data / sub, dest / sub)
    index: dict[str, Any] = {"schema": 1, "units": entries, "failures": []}
    if inputs is not None:
        index["inputs"] = {**inputs, "sources": {e["program"]: e["source"]["sha256"] for e in entries}}
    (dest / "index.json").write_text(json.dumps(index))
    return dest


def unpack(wheel: Path, dest: Path) -> Path:
    """The wheel's data dir, unpacked as pip would install it."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(dest)
    return dest / "hids_bytecode" / "data"


def trust_dir(dest: Path, *pubs: Path) -> Path:
    dest.mkdir(mode=0o755)
    for pub in pubs:
        shutil.copy(pub, dest / pub.name)
    return dest


def cli(data: Path, *args: str, strace: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(data),
           "HIDS_BYTECODE_PIN_ROOT": PIN_ROOT}
    prefix = ["strace", "-f", "-e", "trace=bpf", "-o", str(strace)] if strace else []
    return subprocess.run([*prefix, sys.executable, "-m", "hids_bytecode", *args], capture_output=True, text=True,
                          env=env, check=False, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("keys")
    for name in ("fleet", "other"):
        proc = invoke("keys.generate", "--out", str(out), "--name", name)
        assert proc.returncode == 0, proc.stderr
    return {"key": out / "fleet.key", "pub": out / "fleet.pub", "other_key": out / "other.key",
            "other_pub": out / "other.pub"}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("signing-build")
    return build_dir_from_data(make_loader_data(tmp / "loader"), tmp / "build")


@pytest.fixture(scope="module")
def signed_wheel(build: Path, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("signed-dist")
    proc = invoke("bundle", "--build-dir", str(build), "--dist", str(dist), "--sign-key", str(keys["key"]))
    assert proc.returncode == 0, proc.stderr
    # The closing output (rich, on stderr like all progress) says who signed.
    assert "UNSIGNED" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("signed by ")
    (wheel,) = dist.glob("*.whl")
    return wheel


@pytest.fixture()
def data(signed_wheel: Path, tmp_path: Path) -> Path:
    """A private unpacked copy of the signed wheel a test may tamper with."""
    return unpack(signed_wheel, tmp_path / "site")


@pytest.fixture()
def trusted(keys: dict[str, Path], tmp_path: Path) -> Path:
    return trust_dir(tmp_path / "keys", keys["pub"])


def fingerprint(pub: Path) -> str:
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(pub), "-outform", "DER"], capture_output=True,
                         check=True).stdout
    return hashlib.sha256(der[-32:]).hexdigest()


# --- keys and the build side ---------------------------------------------------------------------

def test_keys_generate_private_0600_public_readable_never_overwritten(keys: dict[str, Path]) -> None:
    assert stat.S_IMODE(keys["key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(keys["pub"].stat().st_mode) == 0o644
    text = subprocess.run(["openssl", "pkey", "-in", str(keys["key"]), "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout
    assert text.startswith("ED25519 Private-Key")
    again = invoke("keys.generate", "--out", str(keys["key"].parent), "--name", "fleet")
    assert again.returncode == 6 and "refusing to overwrite" in again.stderr


def test_bundle_without_key_says_unsigned_and_ships_no_signature(build: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HIDS_SIGNING_KEY"}
    proc = subprocess.run([*INVOKE, "bundle", "--build-dir", str(build), "--dist", str(tmp_path)], env=env,
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("UNSIGNED: no --sign-key or HIDS_SIGNING_KEY given")
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hids_bytecode/data/manifest.json" in names and "hids_bytecode/data/manifest.json.sig" not in names


def test_signing_key_from_environment_and_reproducible(build: Path, keys: dict[str, Path], signed_wheel: Path,
                                                      tmp_path: Path) -> None:
    proc = invoke("bundle", "--build-dir", str(build), "--dist", str(tmp_path),
                  env={"HIDS_SIGNING_KEY": str(keys["key"])})
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("*.whl")
    # Same inputs, same key: byte-identical (Ed25519 is deterministic, no clock is read).
    assert wheel.name == signed_wheel.name and wheel.read_bytes() == signed_wheel.read_bytes()


def test_signing_key_others_can_read_is_refused(build: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    shutil.copy(keys["key"], loose)
    loose.chmod(0o644)
    proc = invoke("bundle", "--build-dir", str(build), "--dist", str(tmp_path / "dist"), "--sign-key", str(loose))
    assert proc.returncode == 6 and "lets others read it" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "dist").exists()


def test_openssl_cli_verifies_the_same_signature(data: Path, keys: dict[str, Path]) -> None:
    def openssl(pub: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in",
                               str(data / "manifest.json"), "-sigfile", str(data / "manifest.json.sig")],
                              capture_output=True, text=True, check=False)
    ok = openssl(keys["pub"])
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout
    assert openssl(keys["other_pub"]).returncode != 0
    (data / "manifest.json").write_bytes((data / "manifest.json").read_bytes().replace(b'"schema": 1', b'"schema":  1'))
    assert openssl(keys["pub"]).returncode != 0


def test_twine_check_strict_and_license_inside(signed_wheel: Path) -> None:
    proc = subprocess.run([str(ROOT / ".venv/bin/twine"), "check", "--strict", str(signed_wheel)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "PASSED" in proc.stdout, proc.stdout + proc.stderr
    zf = zipfile.ZipFile(signed_wheel)
    dist_info = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = zf.read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: GPL-2.0-only\n" in metadata and "License-File: LICENSE\n" in metadata
    assert "Description-Content-Type: text/markdown" in metadata and "Project-URL: Source, https://" in metadata
    assert zf.read(f"{dist_info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert b"GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991" in (ROOT / "LICENSE").read_bytes()


# --- the host ------------------------------------------------------------------------------------

def test_signed_wheel_verifies_and_loads(data: Path, trusted: Path, keys: dict[str, Path]) -> None:
    explain = cli(data, "--trusted-keys", str(trusted), "--require-signature", "select", "--explain", "mini")
    assert explain.returncode == 0, explain.stderr
    assert f"manifest: verified, signed by fleet.pub (sha256 {fingerprint(keys['pub'])}) from {trusted}" \
        in explain.stdout.splitlines()
    as_json = json.loads(cli(data, "--trusted-keys", str(trusted), "select", "--json", "mini").stdout)
    assert as_json["signature"]["signer"] == {"file": "fleet.pub", "fingerprint": fingerprint(keys["pub"])}
    audit = cli(data, "--trusted-keys", str(trusted), "audit")
    assert audit.returncode == 0 and audit.stdout.strip().endswith("objects ok")
    load = cli(data, "--trusted-keys", str(trusted), "load", "mini")
    try:
        assert load.returncode == 0, load.stderr
        shown = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", f"{PIN_ROOT}/mini/progs/open__tracepoint"],
                               capture_output=True, text=True, check=True)
        assert json.loads(shown.stdout)["name"] == "open__tracepoint"
    finally:
        assert cli(data, "--trusted-keys", str(trusted), "unload", "mini").returncode == 0


def _tamper_object(data: Path, keys: dict[str, Path]) -> None:
    obj = data / json.loads((data / "manifest.json").read_text())["objects"][0]["object"]
    blob = bytearray(obj.read_bytes())
    blob[-1] ^= 0xFF
    obj.write_bytes(bytes(blob))


def _foreign_object_with_its_hash(data: Path, keys: dict[str, Path]) -> None:
    """The issue's attack: another object dropped in, its sha256 written into the manifest."""
    manifest = json.loads((data / "manifest.json").read_text())
    mini = next(e for e in manifest["objects"] if e["unit"].startswith("mini/") and e["kind"] == "exact")
    foreign = next(e for e in manifest["objects"] if e["program"] == "rejected")
    mini.update(object=foreign["object"], sha256=foreign["sha256"], size=foreign["size"])
    (data / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _tamper_signature(data: Path, keys: dict[str, Path]) -> None:
    sig = bytearray((data / "manifest.json.sig").read_bytes())
    sig[10] ^= 0x01
    (data / "manifest.json.sig").write_bytes(bytes(sig))


def _signed_by_untrusted_key(data: Path, keys: dict[str, Path]) -> None:
    subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", str(keys["other_key"]), "-rawin", "-in",
                    str(data / "manifest.json"), "-out", str(data / "manifest.json.sig")], check=True)


def _remove_signature(data: Path, keys: dict[str, Path]) -> None:
    (data / "manifest.json.sig").unlink()


@pytest.mark.parametrize(("attack", "error"), [
    (_tamper_object, "IntegrityError"),  # the signed manifest's sha256 catches it
    (_foreign_object_with_its_hash, "SignatureError"),
    (_tamper_signature, "SignatureError"),
    (_signed_by_untrusted_key, "SignatureError"),
    (_remove_signature, "SignatureError"),
], ids=["tampered-object", "tampered-manifest", "tampered-signature", "untrusted-key", "missing-signature"])
def test_refused_before_any_bpf_call(attack: Any, error: str, data: Path, trusted: Path, keys: dict[str, Path],
                                     tmp_path: Path) -> None:
    attack(data, keys)
    trace = tmp_path / "strace"
    proc = cli(data, "--trusted-keys", str(trusted), "load", "mini", strace=trace)
    assert proc.returncode == EXIT_CODES[error], proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "bpf(" not in trace.read_text()  # not one bpf() call: nothing of the object reached the kernel
    assert not Path(PIN_ROOT).exists()
    if error == "SignatureError":  # every command reads the manifest through the same check
        for args in (["select", "mini"], ["audit"], ["list"], ["provenance"], ["--version"]):
            assert cli(data, "--trusted-keys", str(trusted), *args).returncode == EXIT_CODES[error], args


def test_several_keys_trusted_during_rotation(data: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    both = trust_dir(tmp_path / "both", keys["other_pub"], keys["pub"])
    proc = cli(data, "--trusted-keys", str(both), "select", "--explain", "mini")
    assert proc.returncode == 0 and "signed by fleet.pub" in proc.stdout
    only_new = trust_dir(tmp_path / "new", keys["other_pub"])
    assert cli(data, "--trusted-keys", str(only_new), "list").returncode == EXIT_CODES["SignatureError"]


def test_no_key_configured_runs_unverified_unless_required(data: Path, tmp_path: Path) -> None:
    empty = trust_dir(tmp_path / "empty")
    proc = cli(data, "--trusted-keys", str(empty), "select", "--explain", "mini")
    assert proc.returncode == 0 and f"manifest: NOT VERIFIED (signed; no key trusted in {empty})" in proc.stdout
    required = cli(data, "--trusted-keys", str(empty), "--require-signature", "select", "mini")
    assert required.returncode == EXIT_CODES["SignatureError"] and "no key is trusted" in required.stderr
    missing = cli(data, "--trusted-keys", str(tmp_path / "absent"), "list")
    assert missing.returncode == EXIT_CODES["TrustStoreError"] and "does not exist" in missing.stderr


@pytest.mark.parametrize("unsafe", ["world-writable dir", "group-writable key", "symlinked dir", "foreign owner",
                                    "hard-linked key", "not an ed25519 key", "misnamed key"])
def test_unsafe_trust_store_is_refused(unsafe: str, data: Path, trusted: Path, tmp_path: Path) -> None:
    keys_dir = trusted
    if unsafe == "world-writable dir":
        trusted.chmod(0o777)
    elif unsafe == "group-writable key":
        (trusted / "fleet.pub").chmod(0o664)
    elif unsafe == "symlinked dir":
        keys_dir = tmp_path / "link"
        keys_dir.symlink_to(trusted)
    elif unsafe == "foreign owner":
        os.chown(trusted / "fleet.pub", 65534, 65534)
    elif unsafe == "hard-linked key":
        os.link(trusted / "fleet.pub", tmp_path / "elsewhere.pub")
    elif unsafe == "misnamed key":  # the only key, saved under a name that is not *.pub: never passed over
        (trusted / "fleet.pub").rename(trusted / "fleet.PUB")
    else:
        rsa = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
                             capture_output=True, check=True).stdout
        (trusted / "rsa.pub").write_bytes(subprocess.run(["openssl", "pkey", "-pubout"], input=rsa,
                                                         capture_output=True, check=True).stdout)
    proc = cli(data, "--trusted-keys", str(keys_dir), "select", "mini")
    assert proc.returncode == EXIT_CODES["TrustStoreError"], proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert {"not an ed25519 key": "not an Ed25519 public key", "misnamed key": "is not a *.pub key"}.get(
        unsafe, "refused") in proc.stderr


def test_relative_trusted_keys_is_a_usage_error(data: Path) -> None:
    proc = cli(data, "--trusted-keys", "keys", "list")
    assert proc.returncode == 2 and "not an absolute path" in proc.stderr


# --- provenance ----------------------------------------------------------------------------------

def test_provenance_covered_by_the_signature(data: Path, trusted: Path) -> None:
    doc = json.loads(cli(data, "--trusted-keys", str(trusted), "provenance", "--json").stdout)
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in doc["subject"]}
    site = data.parent.parent
    shipped = {str(p.relative_to(site)) for p in (site / "hids_bytecode").rglob("*") if p.is_file()}
    assert set(subjects) == shipped - {f"hids_bytecode/data/{n}" for n in
                                       ("manifest.json", "manifest.json.sig", "provenance.json")}
    for name, sha in subjects.items():
        assert hashlib.sha256((site / name).read_bytes()).hexdigest() == sha, name
    verified = cli(data, "--trusted-keys", str(trusted), "audit")
    assert verified.returncode == 0 and "every file the provenance names matches" in verified.stdout, verified.stdout
    code = site / "hids_bytecode" / "cli.py"  # the installed loader's own code is audited by `audit` too
    code.write_bytes(code.read_bytes() + b"\n# changed after the build\n")
    audit = cli(data, "--trusted-keys", str(trusted), "audit")
    assert audit.returncode == EXIT_CODES["IntegrityError"], audit.stdout
    assert "FAIL hids_bytecode/cli.py: differs from the provenance's sha256" in audit.stdout
    provenance = data / "provenance.json"
    provenance.write_bytes(provenance.read_bytes().replace(b"bookworm", b"bullseye"))
    proc = cli(data, "--trusted-keys", str(trusted), "provenance")
    assert proc.returncode == EXIT_CODES["IntegrityError"] and "provenance.json: sha256" in proc.stderr


def test_provenance_lists_every_header_package_of_a_real_build(built_project: Path, keys: dict[str, Path],
                                                               tmp_path: Path) -> None:
    index = json.loads((built_project / "index.json").read_text())
    proc = invoke("bundle", "--build-dir", str(built_project), "--dist", str(tmp_path / "dist"),
                  "--sign-key", str(keys["key"]))
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    data = unpack(wheel, tmp_path / "site")
    trusted = trust_dir(tmp_path / "keys", keys["pub"])
    shown = cli(data, "--trusted-keys", str(trusted), "provenance", "--json")
    assert shown.returncode == 0, shown.stderr
    build = json.loads(shown.stdout)["predicate"]["buildDefinition"]
    deps = build["resolvedDependencies"]
    headers = index["inputs"]["headers"]
    assert headers and all(len(h["sha256"]) == 64 for h in headers)
    for h in headers:
        uri = f"pkg:deb/debian/{h['name']}@{h['version']}?arch={h['arch']}"
        (dep,) = [d for d in deps if d.get("uri") == uri]
        assert dep["digest"] == {"sha256": h["sha256"]} and dep["annotations"]["size"] == h["size"]
    assert len([d for d in deps if d["annotations"].get("role") == "kernel headers"]) == len(headers)
    for name, version in index["inputs"]["toolchain"]["packages"].items():
        assert any(d.get("uri", "").startswith(f"pkg:deb/debian/{name}@{version}?") for d in deps), name
    assert {"name": "kernels.yaml", "digest": {"sha256": index["inputs"]["matrix"]["sha256"]},
            "annotations": {"role": "matrix"}} in deps
    git = deps[0]
    assert len(git["digest"]["gitCommit"]) == 40 and isinstance(git["annotations"]["dirty"], bool)
    units = {u["unit"]: u["cflags"] for u in build["externalParameters"]["units"]}
    assert units == {u["unit"]: u["cflags"] for u in index["units"] if u["kernel"]["arch"] == "x86_64"}
    assert all(units.values())  # every unit's real compiler arguments
    text = cli(data, "--trusted-keys", str(trusted), "provenance").stdout
    assert all(h["sha256"] in text for h in headers) and text.splitlines()[0].split(": ", 1)[1].startswith("verified")


# --- shards --------------------------------------------------------------------------------------

def test_shards_inputs_joined_and_mismatches_refused(build: Path, tmp_path: Path) -> None:
    from hidsbuild.builddir import join, read_build_dir
    from hidsbuild.errors import BundleError

    index = json.loads((build / "index.json").read_text())
    shards = []
    for n, unit_ids in enumerate(([u["unit"] for u in index["units"]][:2], [u["unit"] for u in index["units"]][2:])):
        shard = tmp_path / f"shard{n}"
        units = [u for u in index["units"] if u["unit"] in unit_ids]
        for sub in ("objects", "sources"):
            (shard / sub).mkdir(parents=True)
        for u in units:
            for rel in (u["object"], u["source"]["path"]):
                shutil.copy(build / rel, shard / rel)
        header = {**INPUTS["headers"][0], "name": f"linux-headers-shard{n}"}
        inputs = {**index["inputs"], "headers": [header]}
        (shard / "index.json").write_text(json.dumps({"schema": 1, "units": units, "failures": [], "inputs": inputs}))
        shards.append(shard)
    joined = join([read_build_dir(s) for s in shards])
    assert [h["name"] for h in joined.inputs["headers"]] == ["linux-headers-shard0", "linux-headers-shard1"]
    other = json.loads((shards[1] / "index.json").read_text())
    other["inputs"]["matrix"]["sha256"] = "f" * 64
    (shards[1] / "index.json").write_text(json.dumps(other))
    with pytest.raises(BundleError, match="differ in matrix: not shards of one build"):
        join([read_build_dir(s) for s in shards])
