"""hids_bytecode: pick, verify, load and attach the prebuilt eBPF objects of this wheel, and stream
their events. Standard library plus the system libbpf.so.1 only."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
