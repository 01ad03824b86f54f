"""Precompiled headers: the part of a stitched source that all of a kernel's units parse alike.

A stitched source opens with its headers (local ones inlined, kernel ones #included) and holds
nothing but preprocessor lines until its first declaration. That prologue, without comments and
#line markers so that every program of the project shares it, is precompiled once per kernel and
shared argument set inside the batch's container (the variant macros defined while it is parsed,
undefined at its end), and each unit is compiled from its whole source
as before plus `-include-pch`: the include guards the PCH defined make the prologue a no-op the
second time, so the object comes out byte-identical (docs/DESIGN.md, "Precompiled headers").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["SharedHeader", "prologue", "shared_header"]

_DIRECTIVE = re.compile(r"\s*#\s*(\w*)")


@dataclass(frozen=True)
class SharedHeader:
    id: str
    text: str
    args: tuple[str, ...]  # clang arguments of the PCH build, without input and output


def _strip_comments(line: str, in_comment: bool) -> tuple[str, bool]:
    """`line` without its comments; quotes are respected so `#include "a//b.h"` stays whole."""
    out: list[str] = []
    i, quote = 0, ""
    while i < len(line):
        if in_comment:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out), True
            i, in_comment = end + 2, False
            out.append(" ")
            continue
        c = line[i]
        if quote:
            out.append(line[i:i + 2] if c == "\\" else c)
            i += 2 if c == "\\" else 1
            quote = "" if c == quote else quote
            continue
        if c in "\"'":
            quote = c
        elif line.startswith("/*", i):
            in_comment = True
            i += 2
            continue
        elif line.startswith("//", i):
            break
        out.append(c)
        i += 1
    return "".join(out), in_comment


def prologue(text: str) -> str:
    """The leading run of preprocessor lines of `text`, cut where every conditional is closed,
    without comments, blank lines and #line markers; empty when it includes nothing."""
    kept: list[str] = []
    cut, depth, in_comment = 0, 0, False
    lines = iter(text.splitlines())
    for line in lines:
        while line.endswith("\\"):
            line = line[:-1] + next(lines, "")
        code, in_comment = _strip_comments(line, in_comment)
        if not code.strip():
            continue
        match = _DIRECTIVE.match(code)
        if not match:
            break
        name = match.group(1)
        if name == "line" or name.isdigit():
            continue
        if name in ("if", "ifdef", "ifndef"):
            depth += 1
        elif name == "endif":
            depth -= 1
        kept.append(code.strip())
        if depth == 0:
            cut = len(kept)
    head = kept[:cut]
    if not any(_DIRECTIVE.match(line).group(1) == "include" for line in head):  # type: ignore[union-attr]
        return ""
    return "\n".join(head) + "\n"


def shared_header(source_text: str, args: list[str], excluded: tuple[str, ...]) -> SharedHeader | None:
    """The PCH a unit can use: its source's prologue built with `args` (the unit's arguments minus
    the `excluded` variant macros and the source), or None when the source has no prologue.
    The excluded macros are defined while the prologue is parsed, as they are in every unit's own
    compile, and undefined at its end, so each unit's -D gives them their value afterwards."""
    head = prologue(source_text)
    if not head:
        return None
    text = "".join(f"#define {m} 0\n" for m in excluded) + head + "".join(f"#undef {m}\n" for m in excluded)
    ident = hashlib.sha256("\0".join([text, *args]).encode()).hexdigest()[:16]
    return SharedHeader(ident, text, tuple(args))
