#!/usr/bin/env python3
"""A minimal HIDS agent: every family's events as ECS JSON lines, appended to a file.

    sudo hids-bytecode load                          # pin the programs (they outlive this agent)
    sudo python3 examples/ecs_agent.py --output /var/log/hids/events.ecs.jsonl

It reads the pinned programs (one consumer per ring: a second agent or `watch` is refused), the
kernel drops the agent's own events while it runs, and programs that are unloaded and loaded
again (an upgrade) are picked up again without a restart. Every 10 s it logs the in-kernel
counters and lost events to stderr. SIGTERM/SIGINT stop it cleanly: the filter is cleared and
the file flushed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import hids_bytecode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="file to append ECS JSON lines to")
    parser.add_argument("programs", nargs="*", help="families to read (default: all)")
    args = parser.parse_args()
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    last_report = time.monotonic()
    with open(args.output, "a", buffering=1) as out, \
            hids_bytecode.stream(args.programs or None, format="ecs") as events:
        print(f"ecs_agent: reading {', '.join(f'{p} ({how})' for p, how in events.sources.items())}",
              file=sys.stderr, flush=True)
        while not stop:
            events.poll()  # waits up to 20 ms
            for event in events.drain():
                out.write(json.dumps(event, sort_keys=True) + "\n")
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                print(f"ecs_agent: counters {json.dumps(events.counters(), sort_keys=True)} "
                      f"lost {sum(events.lost.values())}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
