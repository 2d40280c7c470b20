"""Train RecurrentPPO with a RIM (or a baseline: the LSTM, memoryless PPO) on a MinAtar game.

    python scripts/train_minatar.py --env MinAtar/Breakout-v1 --policy rim -n 1000000
    python scripts/train_minatar.py --env MinAtar/SpaceInvaders-v1 --policy lstm --seed 1
    python scripts/train_minatar.py --env MinAtar/Breakout-v1 --policy ppo      # memoryless control

Defaults come from the `minatar` block of rim_agents/hyperparams/ppo_rim.yml (gymnax-blines'
PPO on 16 envs, the MinAtar paper's 3x3-conv network); override any of them with -params
key:value. Returns are game scores (unclipped points of whole games); by default a new run
evaluates every 100,000 steps over 10 games.
"""

from __future__ import annotations

import sys

from rim_agents.cli import train_main

# A 1e7-step run: an evaluation of whole games every 1% of it is enough for a learning curve.
EVALUATION_DEFAULTS = {"eval_freq": 100_000, "eval_episodes": 10}


def main(argv: list[str] | None = None) -> int:
    return train_main(
        argv,
        __doc__ or "",
        default_env="MinAtar/Breakout-v1",
        env_help="MinAtar id: MinAtar/<Game>-v1 (Asterix, Breakout, Freeway, Seaquest, SpaceInvaders)",
        new_run_defaults=EVALUATION_DEFAULTS,
    )


if __name__ == "__main__":
    sys.exit(main())
