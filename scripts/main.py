"""The main job: train a RIM agent on the default MiniGrid memory task, then evaluate it against random.

    python scripts/main.py                       # MiniGrid-MemoryS7-v0, YAML defaults, seed 0
    python scripts/main.py --env MiniGrid-MemoryS11-v0 -n 1000000

Prints the run directory, the TensorBoard command, and a table comparing the trained
agent's final model with a uniformly random policy on the same evaluation episodes;
writes ``main_result.json`` and ``unit_activity.png`` in the run directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sb3_contrib import RecurrentPPO

from rim_agents.evaluation import evaluate, evaluate_random, format_result, write_json
from rim_agents.training import make_config, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="MiniGrid-MemoryS7-v0", help="MiniGrid id")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="training steps (default: YAML)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("-f", "--log-folder", default="logs", help="parent of the run directory")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--num-threads", type=int, default=1, help="CPU threads for torch (default 1)")
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=11.0,
        help="stop training after this wall time even before -n steps",
    )
    args = parser.parse_args(argv)
    try:
        config = make_config(
            args.env,
            policy="rim",
            seed=args.seed,
            n_timesteps=args.n_timesteps,
            log_folder=args.log_folder,
            device=args.device,
            max_seconds=args.train_minutes * 60,
            num_threads=args.num_threads,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def announce(path: Path) -> None:
        print(f"run directory: {path}\nwatch it with: tensorboard --logdir {config.log_folder}", flush=True)

    start = time.perf_counter()
    run_dir = train(config, on_run_dir=announce)
    train_seconds = time.perf_counter() - start
    # Evaluation seeds differ from training's (seed + env index) and the random policy sees the same levels.
    eval_seed = 1_000_000 + args.seed
    start = time.perf_counter()
    agent = evaluate(
        run_dir / "final_model.zip",
        episodes=args.episodes,
        seed=eval_seed,
        activations_path=run_dir / "unit_activity.png",
        device=args.device,
        num_threads=args.num_threads,
    )
    random = evaluate_random(
        args.env, episodes=args.episodes, seed=eval_seed, env_kwargs=config.hyperparams.get("env_kwargs")
    )
    eval_seconds = time.perf_counter() - start
    print(format_result(agent))
    print(format_result(random))
    print("\n| policy | mean return | success rate | mean length |\n|---|---|---|---|")
    for name, result in (("RIM (final model)", agent), ("random", random)):
        mean_std = f"{result['mean_return']:.3f} +- {result['std_return']:.3f}"
        print(f"| {name} | {mean_std} | {result['success_rate']:.2f} | {result['mean_length']:.1f} |")
    steps = RecurrentPPO.load(run_dir / "final_model.zip", device="cpu").num_timesteps
    print(f"\ntraining {train_seconds:.0f} s for {steps} steps, evaluation {eval_seconds:.0f} s")
    summary = {
        "agent": agent,
        "random": random,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "trained_steps": steps,
        "run_dir": str(run_dir),
    }
    write_json(summary, run_dir / "main_result.json")
    print(f"results: {run_dir / 'main_result.json'}, unit activity: {run_dir / 'unit_activity.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
