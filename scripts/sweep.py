"""Run experiment grids and hyperparameter searches on Optuna with shared storage.

    python scripts/sweep.py create --storage sweeps.log --study memory --grid grid.yaml
    python scripts/sweep.py work   --storage sweeps.log --study memory --workers 2 --output logs
    python scripts/sweep.py report --storage sweeps.log --study memory --json memory.json --plot memory.png

A grid file maps training options (env, policy, seed, n_timesteps, n_envs, eval_freq, ...) and
hyperparameters (n_steps, policy_kwargs.rim_kwargs.top_k, ...) to values; a list of several
values is a grid axis and every combination is run once. A search file (--search, --n-trials)
has the same keys; there a list is a categorical choice and {float: [low, high], log: true}
or {int: [low, high]} a range for TPE.

--storage is a journal file (one machine) or postgresql://user:password@host:port/database:
`work` with the same URL and the same shared --output folder on other machines joins the sweep.
"""

from __future__ import annotations

import argparse
import sys

from rim_agents.sweep import PRUNERS, create_grid, create_search, describe_storage, report, work


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--storage",
            default="sweeps.log",
            help="journal file path or postgresql:// URL (default sweeps.log)",
        )
        command.add_argument("--study", required=True, help="study name")

    create = commands.add_parser("create", help="queue one trial per grid cell, or N search trials")
    common(create)
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--grid", metavar="GRID.yaml", help="grid file: lists are axes")
    source.add_argument("--search", metavar="SPACE.yaml", help="search space for TPE")
    create.add_argument("--n-trials", type=int, default=None, help="search trials (with --search)")
    create.add_argument("--pruner", choices=PRUNERS, default="median", help="search pruner (default median)")
    create.add_argument(
        "--n-startup-trials", type=int, default=5, help="random trials before TPE and pruning (default 5)"
    )

    run = commands.add_parser("work", help="take queued trials until the sweep is done")
    common(run)
    run.add_argument("--workers", type=int, default=1, help="worker processes here (default 1)")
    run.add_argument("--output", default="logs", help="folder of run directories, shared between machines")
    run.add_argument("--heartbeat", type=int, default=30, help="seconds between heartbeats (default 30)")
    run.add_argument(
        "--grace",
        type=int,
        default=120,
        help="seconds without heartbeat before a trial is re-queued (default 120)",
    )
    run.add_argument(
        "--recover",
        action="store_true",
        help="re-queue trials left running now (no other worker may be alive)",
    )
    run.add_argument("--max-retry", type=int, default=3, help="re-queues of one cell after dead workers")
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="first re-queue the cells whose last attempt raised an error (after fixing its cause)",
    )

    summary = commands.add_parser("report", help="markdown table over seeds, JSON rows, learning curves")
    common(summary)
    summary.add_argument("--output", default="logs", help="folder the workers wrote to (default logs)")
    summary.add_argument("--json", default=None, metavar="FILE", help="write the rows as JSON")
    summary.add_argument("--plot", default=None, metavar="FILE.png", help="write learning curves")
    summary.add_argument("--threshold", type=float, default=None, help="add steps to reach this return")
    summary.add_argument(
        "--state-plot",
        default=None,
        metavar="FILE.png",
        help="write the RIM runs' largest abs(h) over training",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            if args.grid is not None:
                if args.n_trials is not None:
                    parser.error("--n-trials goes with --search, not --grid")
                count = create_grid(args.storage, args.study, args.grid)
                print(f"study {args.study!r}: {count} grid cells queued in {describe_storage(args.storage)}")
            else:
                if args.n_trials is None:
                    parser.error("--search needs --n-trials")
                count = create_search(
                    args.storage, args.study, args.search, args.n_trials, args.pruner, args.n_startup_trials
                )
                print(
                    f"study {args.study!r}: {count} search trials queued in {describe_storage(args.storage)}"
                )
            return 0
        if args.command == "work":
            return work(
                args.storage,
                args.study,
                args.output,
                workers=args.workers,
                heartbeat=args.heartbeat,
                grace=args.grace,
                recover=args.recover,
                max_retry=args.max_retry,
                retry_failed=args.retry_failed,
            )
        text = report(
            args.storage, args.study, args.output, args.json, args.plot, args.threshold, args.state_plot
        )
        print(text, end="")
        return 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
