"""`python -m bench MODE [--quick] ...` (from the repo root; `scripts/run-bench` does it).

Modes: `transfer` (twostep beside local commits, hand-written 2PC and SQLAlchemy twophase),
`coordinator` (the coordinator alone: decisions/s, RPCs and fsyncs per decision, memory),
`recovery` (orphaned prepared branches finished after a coordinator restart), `hostile`
(stalled calls, garbage and Begin floods: the coordinator's memory, others' answers). Each starts
its own private servers and coordinator and prints Markdown tables on stdout (progress on
stderr); the exit status is 1 when a check failed (money not conserved, branches left).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import coordinator_alone, hostile, recovery, transfer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    for name, module in (
        ("transfer", transfer),
        ("coordinator", coordinator_alone),
        ("recovery", recovery),
        ("hostile", hostile),
    ):
        doc = module.__doc__ or ""
        sub = modes.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
