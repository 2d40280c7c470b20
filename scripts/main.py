"""The main job: a RIM agent on a memory task, beside the memoryless control and a random policy.

    python scripts/main.py                  # MiniGrid-MemoryS7-v0 at a 3x3 view, test MemoryS11
    python scripts/main.py -n 200000 --control-steps 100000 --episodes 50

1. Trains the RIM agent (RecurrentPPO, the YAML's MiniGrid block, ``env_kwargs.view_size:3``)
   for ``-n`` steps or ``--train-minutes``, whichever comes first.
2. Trains the memoryless control: SB3 PPO with the same features extractor, heads and
   hyperparameters, no recurrence (``--policy ppo`` of the training scripts). It is the
   ceiling any claim of memory has to beat: on MemoryS7 it can reach the object it walks to
   by chance, half of the time.
3. Evaluates both final models and a uniformly random policy on the same episodes of the
   training task and of a longer test task (``--test-env``: the same view, a longer hallway,
   the cue held for longer), and prints a table with 95% intervals of the success rate.

Writes ``main_result.json`` and ``unit_activity.png`` in the RIM's run directory.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from rim_agents.evaluation import evaluate, evaluate_random, load_agent, write_json
from rim_agents.training import make_config, parse_overrides, train

# The view the job trains with: at 3x3 the cue is out of sight from the hallway's end, so
# only memory tells which way to turn (docs/results.md: the memoryless control stays at 0.5).
DEFAULT_OVERRIDES = ["env_kwargs.view_size:3"]


def success_interval(successes: float, episodes: int) -> tuple[float, float]:
    """95% Wilson interval of a success rate measured over ``episodes`` episodes."""
    z = 1.96
    p = successes
    centre = (p + z * z / (2 * episodes)) / (1 + z * z / episodes)
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes * episodes)) / (1 + z * z / episodes)
    return max(0.0, centre - half), min(1.0, centre + half)


def trained_steps(run_dir: Path) -> int:
    model: BaseAlgorithm = load_agent(run_dir / "final_model.zip", device="cpu")[0]
    return int(model.num_timesteps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="MiniGrid-MemoryS7-v0", help="MiniGrid training task")
    parser.add_argument(
        "--test-env", default="MiniGrid-MemoryS11-v0", help="longer task evaluated with the same view"
    )
    parser.add_argument("-n", "--n-timesteps", type=int, default=1_000_000, help="RIM training steps")
    parser.add_argument(
        "--control-steps", type=int, default=300_000, help="training steps of the memoryless control"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("-f", "--log-folder", default="logs", help="parent of the run directories")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per policy and task")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--num-threads", type=int, default=1, help="CPU threads for torch (default 1)")
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=10.0,
        help="stop the RIM's training after this wall time even before -n steps",
    )
    parser.add_argument(
        "-params",
        "--hyperparams",
        nargs="+",
        default=DEFAULT_OVERRIDES,
        metavar="KEY:VALUE",
        help=f"overrides of the YAML block for both agents (default: {' '.join(DEFAULT_OVERRIDES)})",
    )
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.hyperparams)
        common: dict[str, Any] = dict(
            seed=args.seed,
            overrides=overrides,
            log_folder=args.log_folder,
            device=args.device,
            num_threads=args.num_threads,
        )
        budget = args.train_minutes * 60
        rim_config = make_config(
            args.env, policy="rim", n_timesteps=args.n_timesteps, max_seconds=budget, **common
        )
        control_config = make_config(args.env, policy="ppo", n_timesteps=args.control_steps, **common)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def announce(path: Path) -> None:
        print(f"run directory: {path}\nwatch it with: tensorboard --logdir {args.log_folder}", flush=True)

    start = time.perf_counter()
    rim_dir = train(rim_config, on_run_dir=announce)
    rim_seconds = time.perf_counter() - start
    start = time.perf_counter()
    control_dir = train(control_config, on_run_dir=announce)
    control_seconds = time.perf_counter() - start

    # Evaluation seeds differ from training's (seed + env index); every policy sees the same levels.
    eval_seed = 1_000_000 + args.seed
    env_kwargs = rim_config.hyperparams.get("env_kwargs")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    start = time.perf_counter()
    for task in (args.env, args.test_env):
        results[task] = {
            "RIM": evaluate(
                rim_dir / "final_model.zip",
                env_id=task,
                episodes=args.episodes,
                seed=eval_seed,
                activations_path=rim_dir / "unit_activity.png" if task == args.env else None,
                device=args.device,
                num_threads=args.num_threads,
            ),
            "memoryless PPO": evaluate(
                control_dir / "final_model.zip",
                env_id=task,
                episodes=args.episodes,
                seed=eval_seed,
                device=args.device,
                num_threads=args.num_threads,
            ),
            "random": evaluate_random(task, episodes=args.episodes, seed=eval_seed, env_kwargs=env_kwargs),
        }
    eval_seconds = time.perf_counter() - start

    steps = {"RIM": trained_steps(rim_dir), "memoryless PPO": trained_steps(control_dir)}
    view = (env_kwargs or {}).get("view_size", 7)
    print(f"\n{args.episodes} episodes per cell, sampled actions, {view}x{view} view, seed {args.seed}")
    print("| task | policy | training steps | success rate (95% interval) | mean return | mean length |")
    print("|---|---|---|---|---|---|")
    for task, by_policy in results.items():
        for name, result in by_policy.items():
            low, high = success_interval(result["success_rate"], args.episodes)
            trained = f"{steps[name]:,}" if name in steps else "-"
            print(
                f"| {task} | {name} | {trained} | {result['success_rate']:.2f} ({low:.2f}-{high:.2f}) "
                f"| {result['mean_return']:.3f} | {result['mean_length']:.1f} |"
            )
    print(
        f"\nRIM training {rim_seconds:.0f} s, memoryless control {control_seconds:.0f} s, "
        f"evaluation {eval_seconds:.0f} s"
    )
    summary = {
        "results": results,
        "trained_steps": steps,
        "rim_seconds": rim_seconds,
        "control_seconds": control_seconds,
        "eval_seconds": eval_seconds,
        "rim_run_dir": str(rim_dir),
        "control_run_dir": str(control_dir),
    }
    write_json(summary, rim_dir / "main_result.json")
    print(f"results: {rim_dir / 'main_result.json'}, unit activity: {rim_dir / 'unit_activity.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
