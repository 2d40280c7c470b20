"""Train RecurrentPPO with a RIM (or a baseline: the LSTM, memoryless PPO) on an Atari game (ale-py).

    python scripts/train_atari.py --env PongNoFrameskip-v4 --policy rim --device cuda
    python scripts/train_atari.py --env ALE/Breakout-v5 --policy lstm --seed 1 --vec-env subproc
    python scripts/train_atari.py --resume logs/PongNoFrameskip-v4__rim__0__1700000000

Defaults come from the `atari` block of rim_agents/hyperparams/ppo_rim.yml (the paper's RIM
settings: 8 envs x 128 steps, 10M steps); override any of them with -params key:value.
Evaluations play whole games with unclipped rewards, so eval/mean_reward is the game score;
by default a new run evaluates every 250,000 steps over 5 games.
"""

from __future__ import annotations

import sys

from rim_agents.cli import train_main

# Whole Atari games are long (a Pong game is 800 to 4,000 agent steps): evaluate rarely and briefly.
EVALUATION_DEFAULTS = {"eval_freq": 250_000, "eval_episodes": 5}


def main(argv: list[str] | None = None) -> int:
    return train_main(
        argv,
        __doc__ or "",
        default_env="PongNoFrameskip-v4",
        env_help="Atari id: <Game>NoFrameskip-v4 or ALE/<Game>-v5",
        new_run_defaults=EVALUATION_DEFAULTS,
    )


if __name__ == "__main__":
    sys.exit(main())
