"""Atari training speed now against an earlier commit: issue 26's must ratios, side by side.

Runs ``bench/bench_ppo.py`` (this tree's copy, one policy per call, one repeat) in a fresh
process per row, for the rows below, round by round so that load from other processes hits
every row alike, and prints the median env steps/s of each row over the rounds and the ratios
issue 26 asks for:

- RIM-PPO now / RIM-PPO at ``--base`` (must >= 2.0, goal >= 3.0);
- RIM-PPO / memoryless PPO, both now (must >= 0.6, goal >= 0.85).

Rows: the base commit's RIM and memoryless PPO (the training core of ``--base``, unpacked
with ``git archive`` into a temporary folder and put first on ``PYTHONPATH``), and this tree's
RIM and memoryless PPO, as the Atari YAML block stands and with the speed options
(``--options``: the paper's shared actor-critic RIM, training lanes of at most 16 steps, the
pixel network under BF16 autocast; memoryless PPO gets only the BF16 one, the others do not
apply to it).

    OMP_WAIT_POLICY=PASSIVE python bench/bench_vs_commit.py                   # 04a620c, Pong, 3 rounds
    OMP_WAIT_POLICY=PASSIVE python bench/bench_vs_commit.py --rounds 5 --steps 4096

Each row costs a 1,024-step warm-up rollout plus ``--steps`` timed steps (about 15-40 s per
row on one core, plus start-up; the base tree compiles its own native op once, ~1 min).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_ppo.py"
RIM_OPTIONS = [
    "policy_kwargs.shared_lstm:True",
    "policy_kwargs.enable_critic_lstm:False",
    "policy_kwargs.detach_critic:False",
    "max_lane_length:16",
    'policy_kwargs.features_extractor_kwargs:{"bf16":True}',
]
PPO_OPTIONS = ['policy_kwargs.features_extractor_kwargs:{"bf16":True}']
MEDIAN = re.compile(r"^(rim|lstm|ppo)\s*: median\s+([0-9.]+) env steps/s", re.MULTILINE)


@dataclass(frozen=True)
class Row:
    name: str
    tree: str  # "base" or "head"
    policy: str
    params: tuple[str, ...] = ()


def rows(with_options: bool) -> list[Row]:
    table = [
        Row("base_rim", "base", "rim"),
        Row("head_rim", "head", "rim"),
        Row("base_ppo", "base", "ppo"),
        Row("head_ppo", "head", "ppo"),
    ]
    if with_options:
        table += [
            Row("head_rim_options", "head", "rim", tuple(RIM_OPTIONS)),
            Row("head_ppo_options", "head", "ppo", tuple(PPO_OPTIONS)),
        ]
    return table


def unpack(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (of this repository) as plain files under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def steps_per_second(row: Row, tree: Path, env_id: str, steps: int) -> float:
    """One ``bench_ppo.py`` call in a fresh process importing ``rim_agents`` from ``tree``."""
    command = [sys.executable, str(BENCH), "--env", env_id, "--steps", str(steps), "--repeats", "1"]
    command += ["--policies", row.policy]
    if row.params:
        command += ["-params", *row.params]
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{row.name}: {shlex.join(command)} failed:\n{done.stderr[-2000:]}")
    found = dict(MEDIAN.findall(done.stdout))
    if row.policy not in found:
        raise RuntimeError(f"{row.name}: no 'median ... env steps/s' line in:\n{done.stdout[-2000:]}")
    return float(found[row.policy])


def check_imports(tree: Path, expected: Path) -> None:
    """Fail loudly if ``PYTHONPATH`` does not win over the installed (editable) package."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    where = subprocess.run(
        [sys.executable, "-c", "import rim_agents; print(rim_agents.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(expected.resolve()):
        raise RuntimeError(f"rim_agents imports from {where}, not from {expected}")


SPEED_TARGET = "must >= 2.0, goal >= 3.0"
RATIO_TARGET = "must >= 0.6, goal >= 0.85"
RATIOS = (  # label, numerator row, denominator row, issue 26's target
    ("RIM now / RIM at base, YAML block", "head_rim", "base_rim", SPEED_TARGET),
    ("RIM now / RIM at base, with the options", "head_rim_options", "base_rim", SPEED_TARGET),
    ("RIM / memoryless PPO, YAML block now", "head_rim", "head_ppo", RATIO_TARGET),
    ("RIM / memoryless PPO, options (BF16 for PPO)", "head_rim_options", "head_ppo_options", RATIO_TARGET),
    ("memoryless PPO now / at base", "head_ppo", "base_ppo", "for reference"),
)


def report(rounds: dict[str, list[float]]) -> list[str]:
    """The rows' steps/s per round and their medians as a markdown table, then the ratios of
    the medians for the rows that were measured."""
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    count = len(next(iter(rounds.values())))
    lines = ["", "| row | " + " | ".join(f"round {i + 1}" for i in range(count)) + " | median |"]
    lines.append("|---|" + "---:|" * (count + 1))
    for name, values in rounds.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {medians[name]:.1f} |")
    lines.append("")
    for label, top, bottom, target in RATIOS:
        if top in medians and bottom in medians:
            lines.append(f"{label}: {medians[top] / medians[bottom]:.2f}x  ({target})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="04a620c", help="commit to compare with (before issue 26: 04a620c)")
    parser.add_argument("--env", default="PongNoFrameskip-v4", help="Atari environment id")
    parser.add_argument("--steps", type=int, default=2048, help="env steps timed per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    parser.add_argument("--no-options", action="store_true", help="skip the rows with the speed options")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    table = rows(not args.no_options)
    rounds: dict[str, list[float]] = {row.name: [] for row in table}
    with tempfile.TemporaryDirectory(prefix="bench_base_") as scratch:
        trees = {"base": unpack(args.base, Path(scratch)), "head": ROOT}
        for tree in trees.values():
            check_imports(tree, tree / "rim_agents")
        for round_ in range(args.rounds):
            for row in table:
                sps = steps_per_second(row, trees[row.tree], args.env, args.steps)
                rounds[row.name].append(sps)
                print(f"round {round_ + 1}: {row.name:17s} {sps:7.1f} env steps/s", flush=True)
    print("\n".join(report(rounds)))
    print(
        f"{args.env}, {args.steps} timed steps per row after a warm-up rollout, one torch thread, "
        f"base {args.base}, {os.cpu_count()} CPUs"
    )
    print("command: python bench/bench_vs_commit.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
