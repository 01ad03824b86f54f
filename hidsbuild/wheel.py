"""A reproducible wheel written with zipfile.

Written by hand on purpose: no maintained library writes a wheel with a custom platform tag
and byte-identical output without a build-backend round-trip (setuptools/bdist_wheel would
need the objects copied into a source tree, and still stamps the current time unless every
caller exports SOURCE_DATE_EPOCH). A wheel is only a zip with three metadata files, so the
rules that make it reproducible are few and all here: one timestamp from SOURCE_DATE_EPOCH
(fixed default), entries in sorted order with the dist-info last, fixed permissions and
creator system, and deflate at a fixed level.

Compressing a wheel of a full matrix takes seconds, so a wheel is not written again when the one
already at its path is byte for byte the one these files would give: each written wheel gets a
record (beside it, hidden) of its sha256 and of the digest of everything its bytes depend on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import sys
import time
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from .artifacts import sha256_file, write_atomic

__all__ = ["DEFAULT_EPOCH", "WHEEL_MODE", "inputs_digest", "record_line", "remove_wheel", "unchanged", "wheel_bytes",
           "write_wheel", "zip_timestamp"]

# 2024-01-01T00:00:00Z: any fixed instant works; it only has to be inside the zip date range.
DEFAULT_EPOCH = 1704067200
_ZIP_MIN_EPOCH = 315532800  # 1980-01-01, the earliest date a zip entry can hold
_FILE_MODE = 0o100644
_UNIX = 3
WHEEL_MODE = 0o644  # the wheel file itself: others install it


def zip_timestamp(environ: Mapping[str, str] | None = None) -> tuple[int, int, int, int, int, int]:
    """The date of every entry: SOURCE_DATE_EPOCH if set and valid, else DEFAULT_EPOCH, in UTC."""
    env = os.environ if environ is None else environ
    try:
        epoch = int(env.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    except ValueError:
        epoch = DEFAULT_EPOCH
    return time.gmtime(max(epoch, _ZIP_MIN_EPOCH))[:6]


def record_line(name: str, data: bytes) -> str:
    """A RECORD row: path, urlsafe-base64 sha256 without padding, size (PEP 376/427)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_bytes(files: Mapping[str, bytes], dist_info: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The wheel as bytes. `files` maps archive names to contents, dist-info metadata included
    except RECORD, which is computed here."""
    stamp = zip_timestamp(environ)
    record_name = f"{dist_info}/RECORD"
    in_dist_info = sorted(n for n in files if n.startswith(f"{dist_info}/"))
    ordered = sorted(n for n in files if not n.startswith(f"{dist_info}/")) + in_dist_info
    record = "".join(record_line(n, files[n]) + "\n" for n in ordered) + f"{record_name},,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in [*((n, files[n]) for n in ordered), (record_name, record.encode())]:
            info = zipfile.ZipInfo(name, date_time=stamp)  # type: ignore[arg-type]
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = _UNIX
            info.external_attr = _FILE_MODE << 16
            zf.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def inputs_digest(files: Mapping[str, bytes], dist_info: str, environ: Mapping[str, str] | None = None) -> str:
    """A digest of everything wheel_bytes' output is made of: the files (names and contents), the
    dist-info name and the entries' date, and the writer itself (this module's source, the Python
    whose zipfile it drives and the zlib that deflates): equal digests, equal bytes."""
    h = hashlib.sha256()
    writer = {"module": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), "python": sys.version,
              "zlib": zlib.ZLIB_RUNTIME_VERSION, "date": zip_timestamp(environ), "dist_info": dist_info}
    h.update(json.dumps(writer, sort_keys=True).encode())
    for name in sorted(files):
        h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def _record_path(wheel: Path) -> Path:
    return wheel.with_name(f".{wheel.name}.inputs")


def unchanged(wheel: Path, digest: str) -> bool:
    """Whether `wheel` holds, byte for byte, the wheel of the inputs whose digest is `digest`: its
    record names that digest and the file still has the sha256 (and mode) recorded when it was written."""
    try:
        record = json.loads(_record_path(wheel).read_text())
        return (record["inputs"] == digest and stat.S_IMODE(wheel.stat().st_mode) == WHEEL_MODE
                and sha256_file(wheel) == record["sha256"])
    except (OSError, ValueError, TypeError, KeyError):
        return False


def write_wheel(wheel: Path, data: bytes, digest: str) -> None:
    """Write the wheel, then its record: a wheel whose record is missing or older is written again."""
    write_atomic(wheel, data, WHEEL_MODE)
    write_atomic(_record_path(wheel), json.dumps({"inputs": digest, "sha256": hashlib.sha256(data).hexdigest()},
                                                 sort_keys=True).encode())


def remove_wheel(wheel: Path) -> None:
    """Remove a wheel and its record."""
    wheel.unlink(missing_ok=True)
    _record_path(wheel).unlink(missing_ok=True)
