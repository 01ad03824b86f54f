"""Per-type emitted/dropped counters of the loaded programs (`hids-bytecode stats`), as a dict or in
the Prometheus text exposition format (for node-exporter's textfile collector).

Reading a PERCPU_ARRAY consumes nothing, so this needs no consumer lock; the pin tree is still
opened through its checks (pins.locked_tree) and held only while the maps are opened.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from . import interrupts
from . import libbpf as lb
from .btf_layout import schema_from_object
from .errors import LoadError, NotLoaded
from .events import read_counters
from .hostinfo import HostFacts
from .pins import locked_tree

if TYPE_CHECKING:  # imported when called, as api is the outer layer
    from .api import Options

__all__ = ["collect", "prometheus"]

Counts = dict[str, dict[str, dict[str, int]]]
_METRICS = (("emitted", "Events the program sent to user space, per event type."),
            ("dropped", "Events lost because the program's ring or perf buffer was full, per event type."))


def collect(programs: list[str], options: Options, facts: HostFacts) -> Counts:
    """program -> event type -> {"emitted", "dropped"}, summed over CPUs, for the loaded ones."""
    from . import api
    lib = lb.get()
    fds: dict[str, int] = {}
    try:
        with locked_tree(create=False) as tree, interrupts.deferred():
            for program in programs:
                counters = tree.path / program / "maps" / "counters"
                if tree.loaded(program) and counters.exists():
                    fd = lib.bpf_obj_get(str(counters).encode())
                    if fd < 0:
                        raise LoadError(f"cannot open pinned map {counters}: {lib.strerror(fd)}")
                    fds[program] = fd
    except NotLoaded:
        return {}
    out: Counts = {}
    try:
        for program, fd in fds.items():
            data, path = api.object_for(api.choose(program, facts, options), facts)
            with interrupts.deferred():
                out[program] = read_counters(lib, fd, schema_from_object(lib, data, str(path)))
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _label(value: str) -> str:
    return re.sub(r'([\\"\n])', lambda m: "\\n" if m.group(1) == "\n" else "\\" + m.group(1), value)


def prometheus(counts: Counts) -> str:
    lines = []
    for metric, help_text in _METRICS:
        name = f"hids_bytecode_events_{metric}_total"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for program in sorted(counts):
            for kind in sorted(counts[program]):
                value = counts[program][kind].get(metric, 0)
                lines.append(f'{name}{{program="{_label(program)}",type="{_label(kind)}"}} {value}')
    return "\n".join(lines) + "\n"
