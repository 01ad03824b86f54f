"""Ed25519 verification through the system libcrypto (OpenSSL >= 1.1.1) via ctypes.

The loader stays free of Python dependencies, as with libbpf: every distribution that ships
libbpf ships libcrypto, and OpenSSL's EVP interface verifies pure Ed25519 (RFC 8032) with a NULL
digest in EVP_DigestVerifyInit and a one-shot EVP_DigestVerify. Only the soname is given, so
ld.so resolves it from the system's trusted library directories.
"""

from __future__ import annotations

import ctypes

from .errors import SignatureError

__all__ = ["ed25519_verify", "SONAMES"]

SONAMES = ("libcrypto.so.3", "libcrypto.so.1.1")
_EVP_PKEY_ED25519 = 1087  # NID_ED25519, the same in OpenSSL 1.1.1 and 3.x
_vp, _cp, _int, _sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "EVP_PKEY_new_raw_public_key": (_vp, [_int, _vp, _cp, _sz]),
    "EVP_PKEY_free": (None, [_vp]),
    "EVP_MD_CTX_new": (_vp, []),
    "EVP_MD_CTX_free": (None, [_vp]),
    "EVP_DigestVerifyInit": (_int, [_vp, _vp, _vp, _vp, _vp]),
    "EVP_DigestVerify": (_int, [_vp, _cp, _sz, _cp, _sz]),
    "ERR_clear_error": (None, []),
}
_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        errors = []
        for soname in SONAMES:
            try:
                lib = ctypes.CDLL(soname)
                for name, (restype, argtypes) in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
            except (OSError, AttributeError) as exc:
                errors.append(str(exc))
                continue
            _lib = lib
            break
        else:
            raise SignatureError("cannot verify signatures: no usable libcrypto (OpenSSL >= 1.1.1 with Ed25519): "
                                 + "; ".join(errors))
    return _lib


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public_key`'s Ed25519 signature of `message`."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    lib = _load()
    pkey = lib.EVP_PKEY_new_raw_public_key(_EVP_PKEY_ED25519, None, public_key, len(public_key))
    if not pkey:
        lib.ERR_clear_error()
        return False
    ctx = lib.EVP_MD_CTX_new()
    try:
        if not ctx or lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) != 1:
            raise SignatureError("libcrypto could not set up an Ed25519 verification")
        verified: int = lib.EVP_DigestVerify(ctx, signature, len(signature), message, len(message))  # restype c_int
        return verified == 1
    finally:
        lib.ERR_clear_error()  # a failed verify leaves an error queued; it is answered by the return value
        if ctx:
            lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(pkey)
