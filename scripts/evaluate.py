"""Evaluate a saved agent (RecurrentPPO with a RIM or LSTM policy, or memoryless PPO) over episodes.

    python scripts/evaluate.py --model logs/<run>/final_model.zip --episodes 100
    python scripts/evaluate.py --model logs/<run> --env MiniGrid-MemoryS11-v0 --video videos/ --json r.json
    python scripts/evaluate.py --model rim_cartpole.zip --env CartPole-v1 --activations units.png

--model takes a .zip or a run directory (its best model, else its final model, else its latest
checkpoint). The environment defaults to the one in the run's config.yaml; --env takes any id
whose observations and actions fit the agent, a plain gymnasium id included.
"""

from __future__ import annotations

import argparse
import sys

from rim_agents.checks import check_writable_file
from rim_agents.evaluation import evaluate, format_result, resolve_model, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="saved agent (.zip) or run directory")
    parser.add_argument("--env", default=None, help="environment id (default: the run's)")
    parser.add_argument("--episodes", type=int, default=20, help="number of episodes")
    parser.add_argument("--deterministic", action="store_true", help="most likely action instead of sampling")
    parser.add_argument("--seed", type=int, default=0, help="environment seed")
    parser.add_argument("--video", default=None, metavar="DIR", help="write one mp4 per episode here")
    parser.add_argument(
        "--activations", default=None, metavar="FILE.png", help="plot the first episode's active units"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--num-threads", type=int, default=1, help="CPU threads for torch (default 1)")
    args = parser.parse_args(argv)
    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes must be a positive integer, got {args.episodes}")
        if args.json is not None:
            check_writable_file(args.json, "--json")  # now, not after every episode has run
        model, which = resolve_model(args.model)
        if which != "given":
            print(f"model: {model} (the run's {which} model)")
        result = evaluate(
            model,
            env_id=args.env,
            episodes=args.episodes,
            deterministic=args.deterministic,
            seed=args.seed,
            video_dir=args.video,
            activations_path=args.activations,
            device=args.device,
            num_threads=args.num_threads,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_result(result))
    if args.video:
        print(f"videos: {args.video}")
    if args.activations:
        print(f"unit activity: {args.activations}")
    if args.json:
        write_json(result, args.json)
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
