"""hids_bytecode: pick, hash-check, load and attach the prebuilt eBPF objects of this wheel, and stream
their events. Standard library plus the system libbpf.so.1 only.

    import hids_bytecode
    with hids_bytecode.stream(["process", "file"], format="ecs") as s:
        for event in s: ...
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs a cold start
if TYPE_CHECKING:
    from typing import Any

__all__ = ["__version__", "stream"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `stream` lives in api, which loads the whole loader: only for those who use it.
    if name == "stream":
        from .api import stream
        return stream
    raise AttributeError(f"module 'hids_bytecode' has no attribute {name!r}")
