"""Which object a host gets: exact build, then CO-RE, then (opt-in) runtime compilation.

Every candidate considered is recorded as a Step with the reason it was taken or skipped, so
`select --explain` can show the whole decision and a refusal can list what was tried. A chosen
shipped object is checked (path, hash, programs and maps: integrity.read_object) before it is
returned: a tampered package is refused outright, never passed over for the next candidate.
"""

from __future__ import annotations

import os

from .errors import BtfUnavailable, NoMatch
from .hostinfo import HostFacts
from .integrity import read_object
from .manifest import Entry, Manifest
from .records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from .runtime_compile import RuntimePlan  # imported only when the runtime stage is reached

__all__ = ["Step", "Choice", "select", "runtime_compile_enabled", "explain_lines", "RUNTIME_ENV"]

RUNTIME_ENV = "HIDS_RUNTIME_COMPILE"


class Step(Record):
    __slots__ = ("stage", "candidate", "taken", "reason")

    def __init__(self, stage: str, candidate: str, taken: bool, reason: str) -> None:
        self.stage: Final = stage  # "exact" | "core" | "runtime"
        self.candidate: Final = candidate  # unit id, or a description for the runtime stage
        self.taken: Final = taken
        self.reason: Final = reason

    def as_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "candidate": self.candidate, "taken": self.taken, "reason": self.reason}


class Choice(Record):
    __slots__ = ("program", "stage", "entry", "steps", "runtime")

    def __init__(self, program: str, stage: str, entry: Entry, steps: tuple[Step, ...] = (),
                 runtime: RuntimePlan | None = None) -> None:
        self.program: Final = program
        self.stage: Final = stage
        self.entry: Final = entry  # the chosen entry; for "runtime", the entry whose source and flags are compiled
        self.steps: Final = steps
        self.runtime: Final = runtime

    def as_dict(self) -> dict[str, object]:
        return {"program": self.program, "stage": self.stage, "unit": self.entry.unit,
                "object": None if self.runtime else str(self.entry.object_path),
                "steps": [s.as_dict() for s in self.steps]}


def runtime_compile_enabled(flag: bool) -> bool:
    return flag or os.environ.get(RUNTIME_ENV, "") == "1"


def _exact_step(e: Entry, facts: HostFacts, debug: bool) -> Step:
    mismatches = []
    if e.arch != facts.arch:
        mismatches.append(f"arch {e.arch} != host {facts.arch}")
    if e.release != facts.release:
        mismatches.append(f"release {e.release} != host {facts.release}")
    if e.wrapper != facts.wrapper.wrapper:
        mismatches.append(f"syscall_wrapper {e.wrapper} != host {facts.wrapper.wrapper}")
    if e.debug != debug:
        mismatches.append(f"debug {e.debug} != wanted {debug}")
    if mismatches:
        return Step("exact", e.unit, False, "; ".join(mismatches))
    return Step("exact", e.unit, True, "release, arch, syscall wrapper and debug flag all match")


def _core_step(e: Entry, facts: HostFacts, debug: bool) -> Step:
    mismatches = []
    if e.arch != facts.arch:
        mismatches.append(f"arch {e.arch} != host {facts.arch}")
    if e.debug != debug:
        mismatches.append(f"debug {e.debug} != wanted {debug}")
    if e.wrapper != facts.wrapper.wrapper:
        mismatches.append(f"syscall_wrapper {e.wrapper} != host {facts.wrapper.wrapper}")
    if not facts.btf:
        mismatches.append("host has no BTF (/sys/kernel/btf/vmlinux), CO-RE cannot relocate")
    if mismatches:
        return Step("core", e.unit, False, "; ".join(mismatches))
    return Step("core", e.unit, True, "CO-RE object of the host arch; host has BTF")


def select(manifest: Manifest, facts: HostFacts, program: str, *, debug: bool = False,
           strict: bool = False, runtime_compile: bool = False, read: bool = True) -> Choice:
    """Pick the object for `program` on this host, or raise with every reason; `read=False` skips
    reading the chosen object (a decision over entries whose files are not at hand)."""
    entries = [e for e in manifest.entries if e.program == program]
    if not entries:
        raise NoMatch(f"program {program!r} is not in the manifest (has: {', '.join(manifest.programs) or 'none'})")
    steps: list[Step] = []
    for e in (e for e in entries if e.kind == "exact"):
        step = _exact_step(e, facts, debug)
        steps.append(step)
        if step.taken:
            if read:
                read_object(e)
            return Choice(program, "exact", e, tuple(steps))
    if not any(e.kind == "exact" for e in entries):
        steps.append(Step("exact", "-", False, "manifest has no exact builds of this program"))
    steps += _not_built(manifest, program, facts, debug)
    if strict:
        steps.append(Step("core", "-", False, "--strict allows exact matches only"))
        steps.append(Step("runtime", "-", False, "--strict allows exact matches only"))
        raise NoMatch(_refusal(program, facts, steps), steps)
    for e in (e for e in entries if e.kind == "core"):
        step = _core_step(e, facts, debug)
        steps.append(step)
        if step.taken:
            if read:
                read_object(e)
            return Choice(program, "core", e, tuple(steps))
    if not any(e.kind == "core" for e in entries):
        steps.append(Step("core", "-", False, "manifest has no CO-RE builds of this program"))
    if not runtime_compile_enabled(runtime_compile):
        steps.append(Step("runtime", "-", False, f"runtime compilation is off (--runtime-compile or {RUNTIME_ENV}=1)"))
    else:
        template = _runtime_template(entries, facts, debug)
        if template is None:
            steps.append(Step("runtime", "-", False,
                              f"no build of this program for {facts.arch} ships its source and flags"))
        else:
            from .runtime_compile import plan_runtime_compile
            plan = plan_runtime_compile(template, facts, debug)
            steps.append(Step("runtime", template.unit, plan.ready, plan.reason))
            if plan.ready:
                return Choice(program, "runtime", template, tuple(steps), plan)
    error = BtfUnavailable if not facts.btf and not any(s.taken for s in steps) and any(
        e.kind == "core" and e.arch == facts.arch for e in entries) else NoMatch
    raise error(_refusal(program, facts, steps), steps)


def _not_built(manifest: Manifest, program: str, facts: HostFacts, debug: bool) -> list[Step]:
    """The build's own word on the exact variant this host needs, when it skipped it as unable to run."""
    wanted = f"{program}/{facts.release}/w{int(facts.wrapper.wrapper)}d{int(debug)}"
    return [Step("exact", "-", False, f"{s['unit']} was not built: {s['reason']}")
            for s in manifest.skipped if s["unit"] == wanted]


def _runtime_template(entries: list[Entry], facts: HostFacts, debug: bool) -> Entry | None:
    """An exact entry of the host arch and wanted variant: its recipe is the pipeline's."""
    usable = [e for e in entries if e.kind == "exact" and e.arch == facts.arch and e.source_path and "recipe" in e.raw]
    usable.sort(key=lambda e: (e.wrapper != facts.wrapper.wrapper, e.debug != debug))
    return usable[0] if usable else None


def _refusal(program: str, facts: HostFacts, steps: list[Step]) -> str:
    exact = [s for s in steps if s.stage == "exact" and s.candidate != "-"]
    parts = [f"exact: none of {len(exact)} builds matches"] if exact else []
    parts += [f"{s.stage} {s.candidate}: {s.reason}" if s.candidate != "-" else f"{s.stage}: {s.reason}"
              for s in steps if s.stage != "exact" or s.candidate == "-"]
    tried = "; ".join(parts)
    return (f"no object of {program!r} for {facts.release} ({facts.arch}, syscall_wrapper={facts.wrapper.wrapper}); "
            f"tried: {tried}")


def _line(step: Step) -> str:
    return f"{'TAKE' if step.taken else 'skip'} {step.stage:8} {step.candidate}: {step.reason}"


def explain_lines(steps: tuple[Step, ...] | list[Step], detail: bool = False) -> list[str]:
    """--explain's lines: exact builds skipped for another kernel release collapse into one line per
    release (what they all have in common); `detail` lists every candidate."""
    if detail:
        return [_line(s) for s in steps]
    lines: list[str | list[Step]] = []
    groups: dict[str, list[Step]] = {}
    for step in steps:
        parts = step.candidate.split("/")
        release = parts[1] if len(parts) == 3 else None
        if step.stage == "exact" and not step.taken and release and f"release {release} != host" in step.reason:
            if release not in groups:
                groups[release] = []
                lines.append(groups[release])
            groups[release].append(step)
        else:
            lines.append(_line(step))
    out = []
    for item in lines:
        if isinstance(item, str):
            out.append(item)
            continue
        shared = [p for p in item[0].reason.split("; ") if all(p in s.reason.split("; ") for s in item)]
        variants = " ".join(s.candidate.split("/")[2] for s in item)
        out.append(f"skip exact    {item[0].candidate.split('/')[1]} ({len(item)} builds: {variants}): "
                   f"{'; '.join(shared)}")
    return out
