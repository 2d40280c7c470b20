"""Train RecurrentPPO with a RIM (or a baseline: the LSTM, memoryless PPO) on a MiniGrid task.

    python scripts/train_minigrid.py --env MiniGrid-MemoryS7-v0 --policy rim -n 300000
    python scripts/train_minigrid.py --env MiniGrid-MemoryS7-v0 --policy lstm --seed 1
    python scripts/train_minigrid.py --resume logs/MiniGrid-MemoryS7-v0__rim__0__1700000000

Defaults per environment come from rim_agents/hyperparams/ppo_rim.yml; override any of them
with -params key:value (values are Python literals, nested keys with dots).
"""

from __future__ import annotations

import sys

from rim_agents.cli import train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, __doc__ or "", default_env="MiniGrid-MemoryS7-v0", env_help="MiniGrid id")


if __name__ == "__main__":
    sys.exit(main())
