"""Carry unfinished sweep runs across machines: the small state they need to continue, in git.

A session may end on one machine and the next start on a fresh one without ``logs/``. ``save``
copies what a sweep needs to go on: its journal file, and for every run folder of the given
studies its ``config.yaml``, evaluations, latest complete checkpoint (model and optimizer) or
final model, and its training curve (``rollout/ep_rew_mean`` from TensorBoard, as
``curve.csv``, since the event files stay out of git). ``restore`` puts them back; then
``scripts/sweep.py work`` re-queues the trials the old machine was running (their heartbeat
is stale) and each resumes from its checkpoint.

    python experiments/carry_runs.py save --storage runs/sweeps/atari.log \
        --studies atari_pong_default atari_pong_fast --to experiments/state/atari_pong
    python experiments/carry_runs.py restore --from experiments/state/atari_pong \
        --storage runs/sweeps/atari.log
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

from rim_agents.checkpoints import CHECKPOINT_DIR, checkpoint_problem, sorted_checkpoints

CURVE_TAG = "rollout/ep_rew_mean"


def training_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, mean training return)`` pairs of a run's TensorBoard events, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted((run_dir / "tb").glob("**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if CURVE_TAG in accumulator.Tags()["scalars"]:
            points.update({event.step: event.value for event in accumulator.Scalars(CURVE_TAG)})
    return sorted(points.items())


def save(storage: Path, logs: Path, studies: list[str], to: Path) -> None:
    """Copy the journal and each run's state of ``studies`` under ``logs`` into ``to``."""
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy2(storage, to / storage.name)
    for study in studies:
        for run_dir in sorted(path for path in (logs / study).iterdir() if path.is_dir()):
            target = to / study / run_dir.name
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            if (run_dir / "config.yaml").exists():  # absent only in a run that was just starting
                shutil.copy2(run_dir / "config.yaml", target / "config.yaml")
            if (run_dir / "eval").is_dir():
                shutil.copytree(run_dir / "eval", target / "eval")
            final = run_dir / "final_model.zip"
            whole = [
                (n, p) for n, p in sorted_checkpoints(run_dir / CHECKPOINT_DIR) if not checkpoint_problem(p)
            ]
            steps, checkpoint = whole[-1] if whole else (0, None)
            if final.exists():
                shutil.copy2(final, target / final.name)
            elif checkpoint is not None:
                (target / CHECKPOINT_DIR).mkdir()
                shutil.copy2(checkpoint, target / CHECKPOINT_DIR / checkpoint.name)
            with open(target / "curve.csv", "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["step", CURVE_TAG])
                writer.writerows(training_curve(run_dir))
            state = "finished" if final.exists() else f"checkpoint at {steps} steps"
            print(f"{study}/{run_dir.name}: {state}")


def restore(source: Path, storage: Path, logs: Path) -> None:
    """Put a saved state back: the journal at ``storage``, each run folder under ``logs``."""
    journals = [path for path in source.iterdir() if path.is_file()]
    if len(journals) != 1:
        raise SystemExit(f"error: {source} should hold one journal file, found {[p.name for p in journals]}")
    if storage.exists():
        raise SystemExit(f"error: {storage} exists; move it away first, restore never overwrites")
    storage.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(journals[0], storage)
    for study in (path for path in source.iterdir() if path.is_dir()):
        for run in (path for path in study.iterdir() if path.is_dir()):
            target = logs / study.name / run.name
            if target.exists():
                raise SystemExit(f"error: {target} exists; restore never overwrites a run folder")
            shutil.copytree(run, target)
            print(f"restored {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    saving = commands.add_parser("save", help="copy the state of unfinished runs into a folder for git")
    saving.add_argument("--storage", type=Path, required=True, help="the sweep's journal file")
    saving.add_argument("--studies", nargs="+", required=True, help="study names (folders under --logs)")
    saving.add_argument("--logs", type=Path, default=Path("logs"), help="the sweep's --output (default logs)")
    saving.add_argument("--to", type=Path, required=True, help="folder to write, e.g. experiments/state/NAME")
    restoring = commands.add_parser("restore", help="put a saved state back so the sweep can continue")
    restoring.add_argument("--from", dest="source", type=Path, required=True, help="a folder written by save")
    restoring.add_argument("--storage", type=Path, required=True, help="where the journal goes")
    restoring.add_argument(
        "--logs", type=Path, default=Path("logs"), help="the sweep's --output (default logs)"
    )
    args = parser.parse_args(argv)
    if args.command == "save":
        save(args.storage, args.logs, args.studies, args.to)
    else:
        restore(args.source, args.storage, args.logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
