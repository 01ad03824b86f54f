"""The trust store: the build keys whose signature a manifest needs (docs/SIGNING.md).

Keys are `*.pub` files (SubjectPublicKeyInfo PEM, Ed25519) in one directory, by default
/etc/hids-bytecode/keys; a root-run command may name another with `--trusted-keys` (the
environment never chooses it: docs/THREAT_MODEL.md). The directory and the whole path to it must
be owned by root (or the loader's euid) and not writable by group or others, reached through no
symlink (safefs.open_private_dir); each key file must be a regular, singly linked file of the same
owners that no one else can write. Anything else is refused, never skipped: a key that cannot be
trusted must not silently turn enforcement off or on. Several keys may be trusted at once (rotation).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TrustStoreError
from .records import Record
from .safefs import Unsafe, open_private_dir, open_private_file, read_fd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["DEFAULT_KEYS_DIR", "DEFAULT_POLICY", "TrustPolicy", "TrustedKey", "trusted_keys", "raw_public_key"]

DEFAULT_KEYS_DIR = Path("/etc/hids-bytecode/keys")
# DER of SubjectPublicKeyInfo { AlgorithmIdentifier { id-Ed25519 (1.3.101.112) }, BIT STRING (32 bytes) }:
# every Ed25519 public key has exactly this 12-byte prefix (RFC 8410, section 10.1).
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")
_MAX_KEY_FILE = 4096


class TrustPolicy(Record):
    """Where the keys are and whether having none is fatal. `explicit`: the directory was named by
    the caller, so its absence is an error; the default directory may simply not exist."""

    __slots__ = ("keys_dir", "require_signature", "explicit")

    def __init__(self, keys_dir: Path = DEFAULT_KEYS_DIR, require_signature: bool = False,
                 explicit: bool = False) -> None:
        self.keys_dir: Final = keys_dir
        self.require_signature: Final = require_signature
        self.explicit: Final = explicit


DEFAULT_POLICY = TrustPolicy()  # read-only: one instance serves every default argument


class TrustedKey(Record):
    __slots__ = ("name", "raw")

    def __init__(self, name: str, raw: bytes) -> None:
        self.name: Final = name  # the file name in the keys directory
        self.raw: Final = raw  # the 32-byte Ed25519 public key

    @property
    def fingerprint(self) -> str:
        """sha256 of the raw public key, as `invoke keys.generate` prints it."""
        import hashlib
        return hashlib.sha256(self.raw).hexdigest()


def raw_public_key(pem: bytes, shown: str) -> bytes:
    """The 32 raw bytes of an Ed25519 SPKI PEM public key; TrustStoreError otherwise."""
    import base64  # only with a key to read: most starts have none
    import binascii
    lines = pem.decode("ascii", "replace").strip().splitlines()
    if len(lines) < 3 or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise TrustStoreError(f"{shown}: not a PEM public key (-----BEGIN PUBLIC KEY-----)")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise TrustStoreError(f"{shown}: PEM body is not base64") from None
    if len(der) != len(_SPKI_ED25519) + 32 or not der.startswith(_SPKI_ED25519):
        raise TrustStoreError(f"{shown}: not an Ed25519 public key")
    return der[len(_SPKI_ED25519):]


def trusted_keys(policy: TrustPolicy) -> list[TrustedKey]:
    """Every key of the store, sorted by file name; [] when the default directory does not exist.
    Anything in the directory that is not a `*.pub` key is refused."""
    if not policy.keys_dir.is_absolute():
        raise TrustStoreError(f"trusted keys directory {policy.keys_dir} must be an absolute path")
    try:
        dir_fd = open_private_dir(policy.keys_dir)
    except FileNotFoundError:
        if policy.explicit:
            raise TrustStoreError(f"trusted keys directory {policy.keys_dir} does not exist") from None
        return []
    except Unsafe as exc:
        raise TrustStoreError(f"trusted keys directory refused: {exc}") from None
    except OSError as exc:
        raise TrustStoreError(f"trusted keys directory {policy.keys_dir}: {exc.strerror or exc}") from None
    keys = []
    try:
        names = sorted(os.listdir(dir_fd))
        # Fail closed: a key saved as fleet.PUB or fleet.pem would otherwise be passed over and,
        # the only key, turn verification off without a word.
        stray = [n for n in names if not n.endswith(".pub")]
        if stray:
            raise TrustStoreError(f"trusted keys directory {policy.keys_dir} holds {stray[0]!r}, which is not a "
                                  "*.pub key: only keys belong there")
        for name in names:
            shown = str(policy.keys_dir / name)
            try:
                data = read_fd(open_private_file(dir_fd, name, shown))
            except Unsafe as exc:
                raise TrustStoreError(f"trusted key refused: {exc}") from None
            except OSError as exc:
                raise TrustStoreError(f"{shown}: {exc.strerror or exc}") from None
            if len(data) > _MAX_KEY_FILE:
                raise TrustStoreError(f"{shown}: {len(data)} bytes is too large for a public key")
            keys.append(TrustedKey(name, raw_public_key(data, shown)))
    finally:
        os.close(dir_fd)
    return keys
