"""Stitching: a program's source and its local includes merged into one self-contained .c.

As Datadog's include_headers does for runtime compilation, every `#include "..."` that resolves
to a file of the project is inlined once (others, such as the generated vmlinux.h, stay) (later
includes of the same file are dropped, as the headers' own guards would); `#include <...>`
kernel headers stay. `#line` markers keep compiler messages pointing at the original files, by
project-relative path so the result does not depend on where the checkout lives.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

__all__ = ["Stitched", "stitch", "StitchError"]

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


class StitchError(Exception):
    pass


@dataclass(frozen=True)
class Stitched:
    program: str
    text: str
    files: tuple[str, ...]  # project-relative paths merged in, in order

    @cached_property  # read for every unit's cache key and index entry: hashed once
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def stitch(program: str, source: Path, project: Path, include_dirs: list[Path]) -> Stitched:
    """Merge `source` and the local headers it reaches into one translation unit."""
    seen: list[Path] = []
    out: list[str] = []
    root = project.resolve()

    def rel(path: Path) -> str:  # of a resolved path
        return path.relative_to(root).as_posix()

    def resolve(name: str, including: Path) -> Path | None:
        for base in (including.parent, *include_dirs):
            candidate = (base / name).resolve()
            if candidate.is_file():
                return candidate
        return None

    def emit(path: Path, chain: tuple[Path, ...]) -> None:
        seen.append(path)
        out.append(f'#line 1 "{rel(path)}"')
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = _LOCAL_INCLUDE.match(line)
            if not match:
                out.append(line)
                continue
            target = resolve(match.group(1), path)
            if target is None:  # not ours (e.g. the generated vmlinux.h): the compiler resolves it
                out.append(line)
                continue
            if target in chain:
                raise StitchError(f"{rel(path)}:{number}: include cycle through {rel(target)}")
            if target not in seen:
                emit(target, chain + (target,))
            out.append(f'#line {number + 1} "{rel(path)}"')

    source = source.resolve()
    emit(source, (source,))
    return Stitched(program, "\n".join(out) + "\n", tuple(rel(p) for p in seen))
