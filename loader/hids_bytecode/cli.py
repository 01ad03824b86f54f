"""`hids-bytecode` (also `python -m hids_bytecode`): select, load, unload, watch, stats, list, audit, provenance.

Expected failures print one line, `hids-bytecode: <reason>`, and exit with the error's own code
(errors.py); `--json` output is for agents.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from . import api
from .errors import EXIT_CODES, HidsError, IntegrityError, InvalidArgument, NotPermitted
from .hostinfo import SUPPORTED_ARCHES, what_if
from .integrity import audit_objects, provenance_problems
from .manifest import DATA_ENV, Manifest, load_manifest, read_provenance
from .selection import RUNTIME_ENV, Step, explain_lines
from .trust import DEFAULT_KEYS_DIR, TrustPolicy

TYPE_CHECKING = False  # typing costs a cold start
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = ["main", "build_parser"]

_DESCRIPTION = """Prebuilt eBPF bytecode for host intrusion detection: pick the object built for this
kernel, check its hash, load and attach it through libbpf, and stream its events."""
_EPILOG = "exit codes: " + ", ".join(f"{code} {name}" for name, code in sorted(EXIT_CODES.items(), key=lambda i: i[1]))


def _selection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="want the debug variant (bpf_printk traces)")
    p.add_argument("--strict", action="store_true", help="accept only an object built for this exact kernel")
    p.add_argument("--runtime-compile", action="store_true",
                   help=f"when no prebuilt object fits, compile the shipped source with the host's clang and "
                        f"kernel headers (also {RUNTIME_ENV}=1); cached under /var/cache/hids-bytecode")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verbose", action="store_true", help="copy libbpf's messages to stderr")
    p.add_argument("--btf", metavar="PATH",
                   help="kernel BTF file (e.g. from the kernel's debug or headers package) for CO-RE on hosts "
                        "without /sys/kernel/btf/vmlinux: selection counts it as the host's BTF and libbpf "
                        "relocates against it (btf_custom_path)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only`, just that command's parser (argv names it: a cold start
    builds only what it parses)."""
    import argparse  # not for a plain `select` (_quick_select)
    parser = argparse.ArgumentParser(prog="hids-bytecode", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="store_true", help="print the manifest's version and source hash")
    parser.add_argument("--trusted-keys", metavar="DIR", type=_abs_path,
                        help=f"directory of trusted build keys (*.pub, Ed25519 PEM) instead of {DEFAULT_KEYS_DIR}; "
                             "it and its path must be root's and writable by no one else. When it holds any key, "
                             "a manifest without a valid signature by one of them is refused (docs/SIGNING.md)")
    parser.add_argument("--require-signature", action="store_true",
                        help="refuse to run when no trusted key is configured, too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    if only in (None, "select"):
        p = sub.add_parser("select", help="show which object each program would get on this host",
                           description="Read the host facts and pick, per program, the exact build for this kernel, "
                                       "else the CO-RE build (host BTF needed), else a runtime compile (opt-in).")
        p.add_argument("programs", nargs="*", help="programs to select (default: all in the manifest)")
        p.add_argument("--explain", action="store_true",
                       help="print the facts with their sources and why each candidate was taken or skipped "
                            "(exact builds for other kernels: one line per release)")
        p.add_argument("-v", "--detail", action="store_true", help="with --explain: one line per candidate")
        p.add_argument("--kernel", metavar="RELEASE",
                       help="what-if: the choice for a host running this `uname -r` instead of this host (a "
                            "pre-upgrade check); facts a kernel cannot be asked are derived from its version and "
                            "shown as such")
        p.add_argument("--arch", choices=SUPPORTED_ARCHES, help="with --kernel: that host's `uname -m`")
        p.add_argument("--version-signature", metavar="TEXT",
                       help="with --kernel: that host's /proc/version_signature (Ubuntu), which names the upstream "
                            "version")
        _selection_flags(p)

    if only in (None, "load"):
        p = sub.add_parser("load", help="load, attach and pin programs under /sys/fs/bpf/hids/<program>/",
                           description="Select and hash-check each program's object, load it, write the agent's pid "
                                       "(--agent-pid, else 0: filter nothing) into `config`, attach (kprobe hooks "
                                       "first, then tracepoints) and pin maps, programs and links so they stay after "
                                       "this command exits. All or nothing per program; a second load of a loaded "
                                       "program is refused before any bpf() call (docs/PINS.md).")
        p.add_argument("programs", nargs="*", help="programs to load (default: all in the manifest)")
        p.add_argument("--agent-pid", type=_pid, metavar="PID",
                       help="the long-lived agent that will read the pins: the kernel drops its own events. "
                            "It must clear config (write 0) when it stops (docs/PINS.md)")
        p.add_argument("--backend", choices=("libbpf", "bpftool"), default="libbpf",
                       help="libbpf via ctypes (default), or `bpftool prog loadall` "
                            "(attaches only if bpftool has autoattach)")
        _selection_flags(p)

    if only in (None, "unload"):
        p = sub.add_parser("unload", help="remove the pins of loaded programs (detaches them)",
                           description="Remove /sys/fs/bpf/hids/<program>/; the kernel frees what no process "
                                       "still holds.")
        p.add_argument("programs", nargs="*", help="programs to unload (default: all in the manifest)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    if only in (None, "watch"):
        p = sub.add_parser("watch", help="print events of one, several or all programs as JSON lines until interrupted",
                           description="Decode events from each program's `events` map (ring or perf buffer) using the "
                                       "object's BTF, all programs in one process. Uses the pinned maps of loaded "
                                       "programs (this process then holds each one's consumer lock: a second watch of "
                                       "any of them is refused, naming this one's pid), else loads and attaches them "
                                       "for as long as the command runs; the kernel drops this process's own events. "
                                       "Events are merged in kernel-timestamp order within --window-ms; each carries "
                                       "its wall-clock time, host, container and schema version (docs/EVENTS.md). "
                                       'Lost events appear as {"event": "lost", ...} lines. A program unloaded and '
                                       "loaded again is picked up again. Ctrl-C exits 130, SIGTERM 143.")
        p.add_argument("programs", nargs="*", help="programs whose events to print (default: all in the manifest)")
        p.add_argument("--format", choices=("raw", "ecs", "ocsf"), default="raw",
                       help="raw: the decoded event; ecs: Elastic Common Schema 8.x; ocsf: OCSF 1.x (docs/EVENTS.md)")
        p.add_argument("--window-ms", type=int, default=50, metavar="MS",
                       help="hold events this long to merge the rings in timestamp order (default 50; 0: no wait)")
        p.add_argument("--count", type=int, default=0, help="stop after this many events (default: run until Ctrl-C)")
        _selection_flags(p)

    if only in (None, "stats"):
        p = sub.add_parser("stats", help="print per-type emitted/dropped counters of the loaded programs",
                           description="Read each loaded program's `counters` map (per event type: sent to user space, "
                                       "lost to a full buffer; summed over CPUs). --prometheus prints the Prometheus "
                                       "text exposition format, for node-exporter's textfile collector "
                                       "(hids-bytecode stats --prometheus > DIR/hids.prom.$$ && mv ...).")
        p.add_argument("programs", nargs="*", help="programs to report (default: all in the manifest)")
        out = p.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="machine-readable output")
        out.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format")

    if only in (None, "list"):
        p = sub.add_parser("list", help="list the manifest's objects",
                           description=f"One line per object: unit, kind, arch, sha256. "
                                       f"Data from {DATA_ENV} or the package.")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    if only in (None, "provenance"):
        p = sub.add_parser("provenance", help="print the wheel's provenance (in-toto statement, SLSA provenance v1)",
                           description="Every input of the objects: the project's git commit, the matrix hash, the "
                                       "toolchain and its Debian package versions, every kernel header package with "
                                       "the sha256 apt checked, the stitched sources, each unit's compiler arguments. "
                                       "The manifest's signature covers it (its sha256 is in the manifest).")
        p.add_argument("--json", action="store_true", help="the statement itself, as JSON")

    if only in (None, "audit"):
        p = sub.add_parser("audit", help="check every shipped file against the manifest and the provenance",
                           description="Hash every object and shipped source against the (signature-checked) "
                                       "manifest, and every file the provenance names, the loader's own code "
                                       "included; exits non-zero if any differs.")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _abs_path(text: str) -> Path:
    import argparse
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an absolute path")
    return Path(text)


def _trust(args: SimpleNamespace) -> TrustPolicy:
    return TrustPolicy(args.trusted_keys or DEFAULT_KEYS_DIR, args.require_signature, args.trusted_keys is not None)


def _manifest(args: SimpleNamespace) -> Manifest:
    return load_manifest(trust=_trust(args))


def _pid(text: str) -> int:
    import argparse
    try:
        return api.check_agent_pid(int(text))
    except (ValueError, HidsError) as exc:
        raise argparse.ArgumentTypeError(str(exc) if isinstance(exc, HidsError) else f"not a pid: {text!r}") from None


def _print(args: SimpleNamespace, doc: Any, text: str) -> None:
    print(json.dumps(doc, sort_keys=True) if args.json else text)


def _options(args: SimpleNamespace, **extra: Any) -> api.Options:
    return api.Options(debug=args.debug, strict=args.strict, runtime_compile=args.runtime_compile,
                       verbose=args.verbose, trust=_trust(args), btf=args.btf, **extra)


def _programs(args: SimpleNamespace) -> list[str]:
    return args.programs or _manifest(args).programs


def _cmd_select(args: SimpleNamespace) -> int:
    if (args.arch or args.version_signature) and not args.kernel:
        raise InvalidArgument("--arch and --version-signature describe a --kernel what-if host")
    if args.kernel:
        facts = what_if(args.kernel, args.arch, args.version_signature, Path(args.btf) if args.btf else None)
    else:
        facts = api.host_facts(_options(args))
    manifest = _manifest(args)
    choices, failures = [], []
    for program in args.programs or manifest.programs:
        try:
            choices.append(api.choose(program, facts, _options(args), manifest))
        except HidsError as exc:
            failures.append((program, exc))
    if args.json:
        doc = {"facts": facts.as_dict(), "choices": [c.as_dict() for c in choices], "signature": _verdict(manifest),
               "refused": [{"program": p, "error": type(e).__name__, "reason": str(e),
                            "steps": [s.as_dict() for s in e.steps]} for p, e in failures]}
        print(json.dumps(doc, sort_keys=True))
    else:
        if args.explain:
            print("facts:")
            for f in facts.facts:
                print(f"  {f.name:16} {str(f.value):28} from {f.source}")
            print(f"manifest: {manifest.verdict.describe() if manifest.verdict else 'not checked'}")
        for c in choices:
            print(f"{c.program}: {c.stage} {c.entry.unit}")
            if args.explain:
                _print_steps(c.steps, args.detail)
        for program, refusal in failures:
            print(f"{program}: refused ({type(refusal).__name__}): {refusal}")
            if args.explain:
                _print_steps(refusal.steps, args.detail)
    return max((e.exit_code for _, e in failures), default=0)


def _print_steps(steps: tuple[Step, ...], detail: bool) -> None:
    for line in explain_lines(steps, detail):
        print(f"    {line}")


def _cmd_load(args: SimpleNamespace) -> int:
    from . import interrupts
    with interrupts.as_errors():
        facts = api.host_facts(_options(args))
        results = [api.load(p, _options(args, backend=args.backend), facts, args.agent_pid) for p in _programs(args)]
        if args.json:
            print(json.dumps([r.as_dict() for r in results], sort_keys=True))
            return 0
        for r in results:
            print(f"{r.choice.program}: {r.choice.stage} {r.choice.entry.unit}, pinned under {r.pins}")
            for rep in r.reports:
                print(f"  {rep.name:28} {rep.status}" + (f": {rep.message}" if rep.message else ""))
    return 0


def _cmd_unload(args: SimpleNamespace) -> int:
    from . import interrupts
    with interrupts.as_errors():
        removed = {p: [str(x) for x in api.unload(p)] for p in _programs(args)}
        _print(args, removed, "\n".join(f"{p}: removed {len(paths)} pins" for p, paths in removed.items()))
    return 0


def _cmd_watch(args: SimpleNamespace) -> int:
    from . import interrupts
    seen = 0
    # Interrupted (exit 130/143) ends the loop; the stream's close then clears the filters and lets go
    # of the rings.
    with interrupts.as_errors(), api.stream(args.programs or None, args.format, _options(args),
                                            window_ms=args.window_ms) as events:
        while not args.count or seen < args.count:
            events.poll()
            batch = events.drain_lines()[:args.count - seen if args.count else None]  # json.dumps(sort_keys=True)
            _write_lines(sys.stdout.fileno(), "".join(batch).encode())  # once per batch: within a poll
            seen += len(batch)
    return 0


def _write_lines(fd: int, data: bytes) -> None:
    """Write whole lines to `fd` in pieces of at most PIPE_BUF bytes, which a pipe takes whole or
    not at all: a SIGTERM while the reader has stopped reading (the pipe full) then ends watch at
    once (Interrupted, from as_errors) without cutting a line in half. Holding the signal until the
    write ends instead would wait forever on such a reader. Only a line longer than PIPE_BUF can be
    cut, and only by a signal that lands while it is half written."""
    from select import PIPE_BUF
    view, start = memoryview(data), 0
    while start < len(data):
        end = len(data) if len(data) - start <= PIPE_BUF else data.rfind(b"\n", start, start + PIPE_BUF) + 1
        if end <= start:  # one line longer than PIPE_BUF: to its end
            end = data.find(b"\n", start) + 1 or len(data)
        while start < end:
            start += os.write(fd, view[start:end])


def _cmd_stats(args: SimpleNamespace) -> int:
    from .stats import collect, prometheus
    options = api.Options(trust=_trust(args))
    counts = collect(_programs(args), options, api.host_facts(options))
    if args.prometheus:
        sys.stdout.write(prometheus(counts))
    elif args.json:
        print(json.dumps(counts, sort_keys=True))
    else:
        print("\n".join(f"{p:10} {t:14} emitted {c.get('emitted', 0):>12} dropped {c.get('dropped', 0):>10}"
                        for p in sorted(counts) for t, c in sorted(counts[p].items())) or "no program is loaded")
    return 0


def _cmd_list(args: SimpleNamespace) -> int:
    manifest = _manifest(args)
    rows = [{"unit": e.unit, "kind": e.kind, "arch": e.arch, "release": e.release, "sha256": e.sha256,
             "variant": e.raw["variant"]} for e in manifest.entries]
    _print(args, {"version": manifest.version, "source_hash": manifest.source_hash, "objects": rows},
           "\n".join(f"{r['unit']:60} {r['kind']:5} {r['arch']:8} {r['sha256'][:16]}" for r in rows))
    return 0


def _cmd_audit(args: SimpleNamespace) -> int:
    manifest = _manifest(args)
    results = audit_objects(manifest)
    bad = [r for r in results if not r.ok]
    # The provenance names every shipped file: the loader's own code is audited too.
    files = provenance_problems(manifest)
    _print(args, {"checked": len(results), "failed": [{"unit": r.entry.unit, "reason": r.reason} for r in bad],
                  "provenance": files},
           "\n".join([f"FAIL {r.entry.unit}: {r.reason}" for r in bad] + [f"FAIL {p}" for p in files]
                     + (["every file the provenance names matches"] if manifest.provenance and not files else [])
                     + [f"{len(results) - len(bad)}/{len(results)} objects ok"]))
    return IntegrityError.exit_code if bad or files else 0


def _verdict(manifest: Manifest) -> dict[str, object] | None:
    return manifest.verdict.as_dict() if manifest.verdict else None


def _cmd_provenance(args: SimpleNamespace) -> int:
    manifest = _manifest(args)
    doc = read_provenance(manifest)
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0
    pred = doc.get("predicate", {})
    build = pred.get("buildDefinition", {})
    print(f"hids-bytecode {manifest.version}: {manifest.verdict.describe() if manifest.verdict else 'not checked'}")
    print(f"builder  {pred.get('runDetails', {}).get('builder', {}).get('id')}")
    for dep in build.get("resolvedDependencies", []):
        digest = ", ".join(f"{k}:{v}" for k, v in sorted(dep.get("digest", {}).items())) or "-"
        role = dep.get("annotations", {}).get("role", "source tree")
        extra = "" if "dirty" not in dep.get("annotations", {}) else f" dirty={dep['annotations']['dirty']}"
        print(f"{role:18} {dep.get('uri') or dep.get('name')} {digest}{extra}")
    for unit in build.get("externalParameters", {}).get("units", []):
        print(f"unit {unit['unit']}: {' '.join(unit['cflags']) or '(no extra compiler arguments)'}")
    print(f"subjects {len(doc.get('subject', []))} files")
    return 0


_COMMANDS = {"select": _cmd_select, "load": _cmd_load, "unload": _cmd_unload, "watch": _cmd_watch, "stats": _cmd_stats,
             "list": _cmd_list, "audit": _cmd_audit, "provenance": _cmd_provenance}


def _command_in(argv: list[str]) -> str | None:
    """The command argv names (its first word after the global options), if it is one."""
    words = iter(argv)
    for word in words:
        if word == "--trusted-keys":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in _COMMANDS else None
    return None


# What a plain `select` may hold to be parsed without argparse: importing it, gettext's locale
# lookups and the help formatter's terminal probes cost an eighth of a cold `select --json` (issue 16).
# Any other argv (a value option, -h, an abbreviation, a typo, programs in two runs) goes to
# argparse; tests/test_loader_start_fast.py checks that both give the same namespace.
_QUICK_FLAGS = {"--json": "json", "--explain": "explain", "-v": "detail", "--detail": "detail", "--debug": "debug",
                "--strict": "strict", "--runtime-compile": "runtime_compile", "--verbose": "verbose"}
_QUICK_DEFAULTS: dict[str, object] = {
    "version": False, "trusted_keys": None, "require_signature": False, "command": "select", "programs": [],
    "kernel": None, "arch": None, "version_signature": None, "btf": None, **dict.fromkeys(_QUICK_FLAGS.values(), False)}


def _quick_select(argv: list[str]) -> SimpleNamespace | None:
    """argv's namespace when it is `select`, then flags of _QUICK_FLAGS and at most one run of
    program names; None otherwise."""
    if not argv or argv[0] != "select":
        return None
    values = dict(_QUICK_DEFAULTS)
    programs: list[str] = []
    after = False  # a flag follows program names: a further name would start a second run
    for word in argv[1:]:
        if word.startswith("-"):
            if word not in _QUICK_FLAGS:
                return None
            values[_QUICK_FLAGS[word]] = True
            after = bool(programs)
        elif after:
            return None  # argparse takes one run of a nargs="*" positional and refuses the rest
        else:
            programs.append(word)
    values["programs"] = programs
    return SimpleNamespace(**values)


def _parse(argv: list[str]) -> SimpleNamespace:
    return build_parser(_command_in(argv)).parse_args(argv, namespace=SimpleNamespace())


def main(argv: list[str] | None = None) -> int:
    # The modules imported so far live until exit: frozen, the collections that parsing the manifest
    # sets off (and the one at exit) do not walk them again (5% of a cold `select`).
    gc.freeze()
    words = sys.argv[1:] if argv is None else argv
    try:
        args = _quick_select(words) or _parse(words)
        if args.version:
            manifest = _manifest(args)
            print(f"hids-bytecode {manifest.version} (source {manifest.source_hash})")
        elif not args.command:
            build_parser().print_help()
            return 2
        code = 0 if args.version else _COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows up here, in the branch below, not at exit
        return code
    except BrokenPipeError:  # before OSError, its base: `| head` is not an error
        # Python flushes stdout again at exit; pointing it at /dev/null keeps that flush quiet (Python docs,
        # "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except HidsError as exc:
        print(f"hids-bytecode: {exc}", file=sys.stderr)
        return exc.exit_code
    except PermissionError as exc:
        print(f"hids-bytecode: {exc.filename or ''}: {exc.strerror} (run as root)", file=sys.stderr)
        return NotPermitted.exit_code
    except OSError as exc:
        print(f"hids-bytecode: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as exc:  # a system file that is not text: one line, not a traceback
        print(f"hids-bytecode: unreadable input, not {exc.encoding}: {exc.reason} at byte {exc.start}",
              file=sys.stderr)
        return 1
