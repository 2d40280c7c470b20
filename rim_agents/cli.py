"""The command line of the training scripts: ``scripts/train_<family>.py`` for every family of ``envs``.

All take the same flags (rl-baselines3-zoo's names) and differ only in the default
environment and the evaluation defaults; this module holds the parser and the logic that
turns flags into a :class:`~rim_agents.training.TrainConfig` (new run, or resume) and trains.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rim_agents.run_state import terminate_as_interrupt
from rim_agents.training import (
    POLICIES,
    VEC_ENVS,
    find_run,
    load_run_config,
    make_config,
    parse_overrides,
    train,
)


def build_train_parser(description: str, default_env: str, env_help: str) -> argparse.ArgumentParser:
    """The training scripts' argument parser.

    :param description: shown by ``--help`` (the script's docstring)
    :param default_env: environment trained when ``--env`` is not given
    :param env_help: what ``--env`` takes, e.g. ``"MiniGrid id"``
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default=None, help=f"{env_help} (default {default_env})")
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default=None,
        help="rim; lstm: same total hidden size; ppo: memoryless, same extractor and heads",
    )
    parser.add_argument("-n", "--n-timesteps", type=int, default=None, help="total environment steps")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("-f", "--log-folder", default=None, help="parent of the run directory (default logs)")
    parser.add_argument("--n-envs", type=int, default=None, help="parallel environments")
    parser.add_argument(
        "--vec-env", choices=VEC_ENVS, default=None, help="dummy: one process; subproc: one per env"
    )
    parser.add_argument("--eval-freq", type=int, default=None, help="evaluate every N env steps; 0 disables")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation")
    parser.add_argument(
        "--save-freq", type=int, default=None, help="checkpoint every N env steps; 0 disables"
    )
    parser.add_argument(
        "--keep-checkpoints",
        type=int,
        default=None,
        help="keep the newest N checkpoints, delete older ones; 0 keeps all (default 5)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device: auto, cpu, cuda, cuda:N (refused where absent)"
    )
    parser.add_argument(
        "--num-threads", type=int, default=None, help="CPU threads for torch (default 1: fastest for the RIM)"
    )
    parser.add_argument(
        "-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE", help="overrides"
    )
    parser.add_argument("--resume", default=None, metavar="PATH", help="checkpoint .zip or run directory")
    parser.add_argument(
        "--no-progress-bar",
        action="store_true",
        help="print a plain progress line every 30 s instead of a bar (the default without a terminal)",
    )
    parser.add_argument(
        "-v", "--verbose", type=int, default=None, help="1: print SB3's table and evaluations"
    )
    return parser


def train_main(
    argv: list[str] | None,
    description: str,
    default_env: str,
    env_help: str,
    new_run_defaults: dict[str, Any] | None = None,
) -> int:
    """Parse the training flags, train, and return the exit status (0 done, 2 bad input, 130 interrupted).

    :param argv: command-line arguments; None reads ``sys.argv``
    :param description: the script's help text
    :param default_env: environment trained when ``--env`` is not given
    :param env_help: what ``--env`` takes
    :param new_run_defaults: :class:`~rim_agents.training.TrainConfig` options a new run takes
        when their flag is not given (Atari: rarer, shorter evaluations); a resumed run keeps its own
    """
    args = build_train_parser(description, default_env, env_help).parse_args(argv)
    options = {
        "log_folder": args.log_folder,
        "vec_env": args.vec_env,
        "eval_freq": args.eval_freq,
        "eval_episodes": args.eval_episodes,
        "save_freq": args.save_freq,
        "keep_checkpoints": args.keep_checkpoints,
        "device": args.device,
        "num_threads": args.num_threads,
        "verbose": args.verbose,
    }
    options = {key: value for key, value in options.items() if value is not None}
    if args.no_progress_bar:
        options["progress_bar"] = False
    try:
        if args.resume is None:
            config = make_config(
                args.env or default_env,
                policy=args.policy or "rim",
                seed=0 if args.seed is None else args.seed,
                overrides=parse_overrides(args.hyperparams),
                n_timesteps=args.n_timesteps,
                n_envs=args.n_envs,
                **{**(new_run_defaults or {}), **options},
            )
            run_dir, checkpoint = None, None
        else:
            run_dir, checkpoint = find_run(args.resume)
            config = load_run_config(run_dir)
            fixed: dict[str, tuple[Any, Any]] = {
                "--env": (args.env, config.env),
                "--policy": (args.policy, config.policy),
                "--seed": (args.seed, config.seed),
            }
            for flag, (given, stored) in fixed.items():
                if given is not None and given != stored:
                    raise ValueError(
                        f"{flag} {given} conflicts with the checkpoint's run ({stored}); drop the flag"
                    )
            if args.hyperparams or args.n_envs is not None or args.eval_episodes is not None:
                # eval/evaluations.npz stores one row of eval_episodes returns per evaluation.
                raise ValueError(
                    "-params, --n-envs and --eval-episodes cannot change a run being resumed; start a new run"
                )
            changes = dict(options)
            if args.n_timesteps is not None:
                changes["n_timesteps"] = args.n_timesteps
            config = type(config).from_dict({**config.to_dict(), **changes})
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def announce(path: object) -> None:
        print(f"run directory: {path}", flush=True)
        print(f"watch it with: tensorboard --logdir {config.log_folder}", flush=True)

    try:
        with terminate_as_interrupt():
            run_dir = train(config, run_dir=run_dir, checkpoint=checkpoint, on_run_dir=announce)
    except KeyboardInterrupt:
        return 130
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"final model: {run_dir / 'final_model.zip'}", flush=True)
    return 0
