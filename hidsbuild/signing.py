"""The fleet's build key: Ed25519, PEM files, a raw detached signature over the manifest's bytes.

Format (docs/SIGNING.md): the signature is the 64 raw bytes of Ed25519 (RFC 8032, pure, no
pre-hash) over the exact bytes of `data/manifest.json` as shipped, stored next to it as
`manifest.json.sig`. The private key is PKCS#8 PEM (mode 0600), the public key SubjectPublicKeyInfo
PEM: OpenSSL reads both, so `openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in
manifest.json -sigfile manifest.json.sig` checks a wheel without this project, and the host's
loader checks it with the system libcrypto alone.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BundleError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# cryptography (~55 ms to import) loads only where a key is read or made: an unsigned build,
# and a rebuild with nothing changed, never need it.

__all__ = ["KEY_ENV", "SigningKey", "generate_keys", "load_signing_key", "resolve_key_path"]

# A path, not the key itself: CI writes its secret to a file and exports where it is.
KEY_ENV = "HIDS_SIGNING_KEY"


@dataclass(frozen=True)
class SigningKey:
    path: Path
    key: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def fingerprint(self) -> str:
        """sha256 of the raw 32-byte public key: what the host's `select --explain` prints."""
        return hashlib.sha256(self.public_raw).hexdigest()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def resolve_key_path(option: str | None, environ: dict[str, str] | None = None) -> Path | None:
    """--sign-key if given, else $HIDS_SIGNING_KEY if set and non-empty, else None (unsigned)."""
    env = os.environ if environ is None else environ
    chosen = option or env.get(KEY_ENV) or None
    return Path(chosen) if chosen else None


def load_signing_key(path: Path) -> SigningKey:
    """The Ed25519 private key in `path`; refused if others can read it or it is not Ed25519."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"signing key {path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BundleError(f"signing key {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read it; chmod 600")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"signing key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key {path}: a {type(key).__name__.lstrip('_')}, not Ed25519")
    return SigningKey(path, key)


def generate_keys(out: Path, name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (PKCS#8 PEM, 0600, created exclusively) and `<name>.pub` (SPKI PEM) in `out`."""
    private, public = out / f"{name}.key", out / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise BundleError(f"{path} exists; refusing to overwrite a key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, 0o600)  # O_CREAT's mode went through the umask; never wider than 0600
        fh.write(pem)
    public.write_bytes(pub)
    public.chmod(0o644)
    return private, public
