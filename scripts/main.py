"""The main job: a RIM agent on a memory task, beside the memoryless control and a random policy.

    python scripts/main.py                  # POPGym RepeatFirstEasy, test RepeatFirstMedium
    python scripts/main.py --env MiniGrid-MemoryS7-v0   # the T-maze at a 3x3 view, test MemoryS11
    python scripts/main.py -n 100000 --control-steps 100000 --episodes 50

1. Trains the RIM agent (RecurrentPPO with a RIM, the YAML's block for the task) for ``-n``
   steps or ``--train-minutes``, whichever comes first.
2. Trains the memoryless control: SB3 PPO with the same features extractor, heads and
   hyperparameters, no recurrence (``--policy ppo`` of the training scripts). It is the
   ceiling any claim of memory has to beat.
3. Evaluates both final models and a uniformly random policy on the same episodes of the
   training task and of a test task where the cue must be held longer, and prints a table
   with 95% intervals (mean return; success rate where the task has one).

The default task, POPGym's RepeatFirst, asks at every step for the suit of the first card of
the episode; the observation is the card just dealt and a first-step flag, without the
previous action (``env_kwargs.previous_action:False``: with it, a memoryless policy could
repeat its own last answer instead of remembering). A memoryless policy is at chance there,
an expected return of -0.5; the test task deals 8 decks instead of 1, so the cue is held for
415 steps instead of 51 (docs/results.md). For MiniGrid-Memory the job trains the T-maze:
a 3x3 view (the cue is out of sight at the fork), every episode starting beside the cue,
the key always north and the ball south (``start_at_cue``, ``fixed_candidates``: the cue
alone says which way to go), one-hot cell codes and the 3 navigation actions; it tests on
MemoryS11's longer hallway with the same options. MiniGrid-Memory's own task, where the cue
must also be compared with the candidate in view, is not learned by any policy here, even
by imitation (docs/results.md, steps 1-8).

Writes ``main_result.json`` and ``unit_activity.png`` in the RIM's run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from stable_baselines3.common.base_class import BaseAlgorithm

from envs import check_env_id, env_family, minigrid, popgym
from rim_agents.evaluation import evaluate, evaluate_random, load_agent, write_json
from rim_agents.stats import t_half_width
from rim_agents.training import TrainConfig, check_run, make_config, make_vec_env, parse_overrides, train


class Task(NamedTuple):
    """What the job does for one family of memory tasks."""

    overrides: list[str]  # YAML overrides for both agents
    steps: int  # default RIM training steps
    test_env: str | None  # default test task for the family's default training task


# POPGym: no previous action (see the docstring). MiniGrid: the T-maze of the docstring; at
# a 3x3 view the cue is out of sight at the fork, so only memory tells which way to turn. Its
# learning rate decays to 0: at a constant one, solved runs collapsed later (docs/results.md,
# step 9).
TASKS = {
    "popgym": Task(["env_kwargs.previous_action:False"], 300_000, None),
    "minigrid": Task(
        [
            "env_kwargs.view_size:3",
            "env_kwargs.actions:3",
            "env_kwargs.start_at_cue:True",
            "env_kwargs.fixed_candidates:True",
            "policy_kwargs.features_extractor_kwargs.one_hot:True",
            "learning_rate:lin_5e-4",
        ],
        300_000,
        "MiniGrid-MemoryS11-v0",
    ),
}


def task_of(env_id: str) -> tuple[str, Task]:
    """The family of ``env_id`` among those the job supports, and its settings."""
    if popgym.owns(env_id):
        return "popgym", TASKS["popgym"]
    if minigrid.owns(env_id):
        return "minigrid", TASKS["minigrid"]
    raise ValueError(f"--env {env_id!r}: the main job runs POPGym (popgym-*) and MiniGrid (MiniGrid-*) tasks")


def default_test_env(env_id: str) -> str:
    """The test task for ``env_id``: POPGym's next difficulty up, MiniGrid-Memory's MemoryS11."""
    family, task = task_of(env_id)
    if family == "popgym" and "Easy-" in env_id:
        return env_id.replace("Easy-", "Medium-")
    if family == "minigrid" and task.test_env is not None and env_id != task.test_env:
        return task.test_env
    raise ValueError(f"no default test task for {env_id!r}: pass --test-env")


def return_interval(returns: list[float]) -> tuple[float, float]:
    """95% t-interval of the mean return over episodes."""
    mean = sum(returns) / len(returns)
    half = t_half_width(returns) or 0.0
    return mean - half, mean + half


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
    parser.add_argument(
        "--env", default="popgym-RepeatFirstEasy-v0", help="training task (POPGym or MiniGrid)"
    )
    parser.add_argument(
        "--test-env",
        default=None,
        help="task with the cue held longer (default: POPGym's Medium difficulty; MiniGrid-MemoryS11-v0)",
    )
    parser.add_argument(
        "-n",
        "--n-timesteps",
        type=int,
        default=None,
        help="RIM training steps (default: 300k)",
    )
    parser.add_argument(
        "--control-steps", type=int, default=300_000, help="training steps of the memoryless control"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("-f", "--log-folder", default="logs", help="parent of the run directories")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per policy and task")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
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
        default=None,
        metavar="KEY:VALUE",
        help="overrides of the YAML block for both agents, after the task's own ("
        + "; ".join(f"{family}: {' '.join(task.overrides)}" for family, task in TASKS.items())
        + ")",
    )
    parser.add_argument(
        "--no-progress-bar",
        action="store_true",
        help="print a plain progress line every 30 s instead of a bar (the default without a terminal)",
    )
    args = parser.parse_args(argv)
    try:
        for flag, value in (
            ("-n", args.n_timesteps),
            ("--control-steps", args.control_steps),
            ("--episodes", args.episodes),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if not args.train_minutes > 0:
            raise ValueError(
                f"--train-minutes must be a positive number of minutes, got {args.train_minutes}"
            )
        _, task = task_of(args.env)
        test_env = args.test_env or default_test_env(args.env)
        overrides = parse_overrides([*task.overrides, *(args.hyperparams or [])])
        common: dict[str, Any] = dict(
            seed=args.seed,
            overrides=overrides,
            log_folder=args.log_folder,
            device=args.device,
            num_threads=args.num_threads,
            progress_bar=not args.no_progress_bar,
        )
        budget = args.train_minutes * 60
        steps = task.steps if args.n_timesteps is None else args.n_timesteps
        rim_config = make_config(args.env, policy="rim", n_timesteps=steps, max_seconds=budget, **common)
        control_config = make_config(args.env, policy="ppo", n_timesteps=args.control_steps, **common)
        # Everything the job will need, before minutes of training: both agents' options, the
        # device, the log folder, and a test task that both agents can act in.
        check_run(rim_config)
        check_run(control_config)
        check_test_env(rim_config, test_env)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        return run_job(args, rim_config, control_config, test_env)
    except KeyboardInterrupt:
        return 130


def check_test_env(config: TrainConfig, test_env: str) -> None:
    """Refuse a test task of another family, or whose observations or actions differ from the
    training task's: both agents and the random policy act there with the training task's options."""
    try:
        check_env_id(test_env)
    except ValueError as error:
        raise ValueError(f"--test-env {test_env!r}: {error}") from error
    if env_family(test_env) != env_family(config.env):
        raise ValueError(
            f"--test-env {test_env!r} is a {env_family(test_env)} task, but the agents train on "
            f"{config.env}, a {env_family(config.env)} task: give a test task of the same family"
        )
    found = []
    for env_id in (config.env, test_env):
        try:
            env = make_vec_env(dataclasses.replace(config, env=env_id), 1, config.seed, evaluation=True)
        except ValueError as error:
            raise ValueError(f"{env_id}: {error}") from error
        found.append(f"observations {env.observation_space} and actions {env.action_space}")
        env.close()
    if found[0] != found[1]:
        raise ValueError(
            f"--test-env {test_env!r} gives {found[1]}, but {config.env} gives {found[0]}: "
            "both agents must act in the test task, so give one of the same shape"
        )


def run_job(
    args: argparse.Namespace, rim_config: TrainConfig, control_config: TrainConfig, test_env: str
) -> int:
    """Train both agents, evaluate them and the random policy, print the table, write the JSON."""

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
    for env_id in (args.env, test_env):
        results[env_id] = {
            "RIM": evaluate(
                rim_dir / "final_model.zip",
                env_id=env_id,
                episodes=args.episodes,
                seed=eval_seed,
                activations_path=rim_dir / "unit_activity.png" if env_id == args.env else None,
                device=args.device,
                num_threads=args.num_threads,
            ),
            "memoryless PPO": evaluate(
                control_dir / "final_model.zip",
                env_id=env_id,
                episodes=args.episodes,
                seed=eval_seed,
                device=args.device,
                num_threads=args.num_threads,
            ),
            "random": evaluate_random(env_id, episodes=args.episodes, seed=eval_seed, env_kwargs=env_kwargs),
        }
    eval_seconds = time.perf_counter() - start

    steps = {"RIM": trained_steps(rim_dir), "memoryless PPO": trained_steps(control_dir)}
    options = ", ".join(f"{key}={value}" for key, value in (env_kwargs or {}).items()) or "none"
    print(f"\n{args.episodes} episodes per cell, sampled actions, seed {args.seed}, env_kwargs: {options}")
    print("| task | policy | training steps | mean return (95% interval) | success rate (95% interval) |")
    print("|---|---|---|---|---|")
    for env_id, by_policy in results.items():
        for name, result in by_policy.items():
            low, high = return_interval(result["returns"])
            trained = f"{steps[name]:,}" if name in steps else "-"
            success = "-"
            if result["success_rate"] is not None:
                s_low, s_high = success_interval(result["success_rate"], args.episodes)
                success = f"{result['success_rate']:.2f} ({s_low:.2f}-{s_high:.2f})"
            print(
                f"| {env_id} | {name} | {trained} | {result['mean_return']:.3f} ({low:.3f} to {high:.3f}) "
                f"| {success} |"
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
