"""Whether a manifest may be used: its detached Ed25519 signature against the trust store.

The rule (docs/SIGNING.md): when any key is trusted, the manifest's exact bytes must carry a valid
signature (`manifest.json.sig`, 64 raw bytes) by one of them, else SignatureError; with no key
trusted, the manifest is used unverified unless the policy requires a signature. The manifest names
every object, source and the provenance by sha256, so this one check covers them all.
"""

from __future__ import annotations

from .errors import SignatureError
from .records import Record
from .trust import TrustedKey, TrustPolicy, trusted_keys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["SIGNATURE_NAME", "Verdict", "check_signature"]

SIGNATURE_NAME = "manifest.json.sig"


class Verdict(Record):
    __slots__ = ("signer", "signed", "keys_dir", "trusted")

    def __init__(self, signer: TrustedKey | None, signed: bool, keys_dir: str, trusted: int) -> None:
        self.signer: Final = signer  # None: used unverified (no key trusted)
        self.signed: Final = signed  # a signature file was present
        self.keys_dir: Final = keys_dir
        self.trusted: Final = trusted  # how many keys the store holds

    def describe(self) -> str:
        if self.signer is not None:
            return (f"verified, signed by {self.signer.name} (sha256 {self.signer.fingerprint}) "
                    f"from {self.keys_dir}")
        state = "signed" if self.signed else "unsigned"
        return f"NOT VERIFIED ({state}; no key trusted in {self.keys_dir})"

    def as_dict(self) -> dict[str, object]:
        return {"verified": self.signer is not None, "signed": self.signed, "keys_dir": self.keys_dir,
                "trusted_keys": self.trusted, "signer": None if self.signer is None else
                {"file": self.signer.name, "fingerprint": self.signer.fingerprint}}


def check_signature(manifest: bytes, signature: bytes | None, policy: TrustPolicy, shown: str) -> Verdict:
    """The verdict on `manifest`'s bytes, or SignatureError naming why it is refused."""
    keys = trusted_keys(policy)
    where = str(policy.keys_dir)
    if not keys:
        if policy.require_signature:
            raise SignatureError(f"{shown}: a signature is required but no key is trusted in {where} "
                                 "(install the build key's .pub there)")
        return Verdict(None, signature is not None, where, 0)
    if signature is None:
        raise SignatureError(f"{shown}: unsigned, but {len(keys)} key(s) are trusted in {where}; refused")
    from .libcrypto import ed25519_verify  # ctypes and libcrypto only when a key is trusted: a cold start skips them
    for key in keys:
        if ed25519_verify(key.raw, signature, manifest):
            return Verdict(key, True, where, len(keys))
    raise SignatureError(f"{shown}: signature is not valid for any of the {len(keys)} key(s) trusted in {where} "
                         "(tampered manifest or signature, or signed by an untrusted key); refused")
