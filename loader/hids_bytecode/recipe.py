"""A unit's compile recipe: the tools to run and their arguments, as data (docs/DESIGN.md, "Compile recipe").

The build side writes one recipe per unit (hidsbuild/units.py) into the manifest; the toolchain
container and this host's runtime compile both run what `render` makes of it, so the steps and
flags are written in one place and nothing reads them back out of strings.

A recipe is a list of steps `{"tool": "clang" | "llc" | "llvm-strip", "args": [str, ...]}`. An
argument may hold placeholders from a closed set, filled from the `Roots` of where it runs:

- `{source}` `{source_dir}`: the stitched source `<program>.c` and its directory;
- `{common}` `{flavour}`: the kernel's two header trees (one tree may serve as both);
- `{btf}`: the directory holding a CO-RE build's vmlinux.h; `{clang_include}`: clang's own headers;
- `{bitcode}` `{object}`: the intermediate and the final file;
- `{wrapper}` `{debug}`: the variant, `1` or `0`;
- `{header_root}`: the argument is repeated for each directory a header tree was unpacked under
  (dropped when there is none, as for trees installed in /usr/src);
- `{since:M.N}`, only at an argument's start: the argument, without it, is kept only for a kernel
  of at least M.N.

`{{` and `}}` stand for literal braces. Anything else in braces, an unknown tool or a
non-string argument is refused with a RecipeError naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Step", "Roots", "RecipeError", "TOOLS", "parse_recipe", "recipe_json", "render"]

TOOLS = ("clang", "llc", "llvm-strip")
_PATHS = ("source", "source_dir", "common", "flavour", "btf", "clang_include", "bitcode", "object")
_FLAGS = ("wrapper", "debug")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_SINCE = re.compile(r"since:(\d+)\.(\d+)")


class RecipeError(ValueError):
    """A recipe that is malformed, or a placeholder the roots give no value for."""


@dataclass(frozen=True)
class Step:
    tool: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Roots:
    """The placeholders' values where a recipe runs; None: there is none here (a recipe that
    needs it is refused)."""

    source: str | None = None
    source_dir: str | None = None
    common: str | None = None
    flavour: str | None = None
    btf: str | None = None
    clang_include: str | None = None
    bitcode: str | None = None
    object: str | None = None
    wrapper: bool | None = None
    debug: bool | None = None
    header_roots: tuple[str, ...] = ()
    kernel: tuple[int, ...] | None = None  # the kernel's upstream version, for {since:M.N}

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _pieces(arg: str) -> list[tuple[str, str]]:
    """`arg` as (literal text, "") and ("", placeholder) pieces; a RecipeError if it holds a
    placeholder outside the set or a lone brace."""
    out: list[tuple[str, str]] = []
    end = 0
    for match in _TOKEN.finditer(arg):
        out.append((arg[end:match.start()], ""))
        end = match.end()
        token, name = match.group(0), match.group(1)
        if token in ("{{", "}}"):
            out.append((token[0], ""))
        elif name is None:
            raise RecipeError(f"argument {arg!r} has a lone {token!r} (write {token * 2} for a literal one)")
        elif name.startswith("since:"):
            if not _SINCE.fullmatch(name) or match.start() != 0:
                raise RecipeError(f"argument {arg!r}: {{since:M.N}} must open the argument, M and N numbers")
            out.append(("", name))
        elif name in _PATHS or name in _FLAGS or name == "header_root":
            out.append(("", name))
        else:
            known = ", ".join(f"{{{n}}}" for n in (*_PATHS, *_FLAGS, "header_root", "since:M.N"))
            raise RecipeError(f"argument {arg!r} has unknown placeholder {{{name}}} (known: {known})")
    out.append((arg[end:], ""))
    return [p for p in out if p != ("", "")]


def parse_recipe(doc: object) -> tuple[Step, ...]:
    """The recipe in `doc` (as parsed from JSON), checked: every step a {tool, args} object, every
    tool known, every argument a string whose placeholders are in the set."""
    if not isinstance(doc, list) or not doc:
        raise RecipeError("a recipe must be a non-empty list of steps")
    steps = []
    for index, raw in enumerate(doc):
        if not isinstance(raw, dict) or set(raw) != {"tool", "args"}:
            raise RecipeError(f"step {index} must be an object with exactly tool and args")
        tool, args = raw["tool"], raw["args"]
        if tool not in TOOLS:
            raise RecipeError(f"step {index} names unknown tool {tool!r} (known: {', '.join(TOOLS)})")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            bad = args if not isinstance(args, list) else next(a for a in args if not isinstance(a, str))
            raise RecipeError(f"step {index} ({tool}): every argument must be a string, not {bad!r}")
        for arg in args:
            _pieces(arg)
        steps.append(Step(tool, tuple(args)))
    return tuple(steps)


def recipe_json(recipe: tuple[Step, ...]) -> list[dict[str, Any]]:
    """The recipe as the manifest stores it."""
    return [{"tool": s.tool, "args": list(s.args)} for s in recipe]


def _value(roots: Roots, name: str) -> str:
    value = getattr(roots, name)
    if value is None:
        raise RecipeError(f"placeholder {{{name}}} has no value here")
    if name in _FLAGS:
        return str(int(value))
    return str(value)


def _render_arg(arg: str, roots: Roots) -> list[str]:
    pieces = _pieces(arg)
    if pieces and pieces[0][1].startswith("since:"):
        if roots.kernel is None:
            raise RecipeError(f"argument {arg!r} depends on the kernel version, which has no value here")
        since = _SINCE.fullmatch(pieces[0][1])
        assert since is not None  # _pieces checked it
        if tuple(roots.kernel) < (int(since.group(1)), int(since.group(2))):
            return []
        pieces = pieces[1:]
    repeat = roots.header_roots if any(name == "header_root" for _, name in pieces) else ("",)
    return ["".join(text or (root if name == "header_root" else _value(roots, name)) for text, name in pieces)
            for root in repeat]


def render(recipe: tuple[Step, ...], roots: Roots) -> list[list[str]]:
    """One argv per step, the tool's bare name first (the caller decides which binary runs)."""
    return [[step.tool, *(out for arg in step.args for out in _render_arg(arg, roots))] for step in recipe]
