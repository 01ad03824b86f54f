"""A reproducible wheel written with zipfile.

Written by hand on purpose: no maintained library writes a wheel with a custom platform tag
and byte-identical output without a build-backend round-trip (setuptools/bdist_wheel would
need the objects copied into a source tree, and still stamps the current time unless every
caller exports SOURCE_DATE_EPOCH). A wheel is only a zip with three metadata files, so the
rules that make it reproducible are few and all here: one timestamp from SOURCE_DATE_EPOCH
(fixed default), entries in sorted order with the dist-info last, fixed permissions and
creator system, and deflate at a fixed level.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
import zipfile
from collections.abc import Mapping

__all__ = ["DEFAULT_EPOCH", "record_line", "wheel_bytes", "zip_timestamp"]

# 2024-01-01T00:00:00Z: any fixed instant works; it only has to be inside the zip date range.
DEFAULT_EPOCH = 1704067200
_ZIP_MIN_EPOCH = 315532800  # 1980-01-01, the earliest date a zip entry can hold
_FILE_MODE = 0o100644
_UNIX = 3


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
