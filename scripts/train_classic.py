"""Train RecurrentPPO with a RIM (or a baseline: the LSTM, memoryless PPO) on a classic-control memory task.

    python scripts/train_classic.py --env CartPoleNoVel-v1 --policy rim -n 100000
    python scripts/train_classic.py --env CartPoleNoVel-v1 -params policy_kwargs.rim_kwargs.comm_read:linear

Defaults per environment come from rim_agents/hyperparams/ppo_rim.yml; override any of them
with -params key:value (values are Python literals, nested keys with dots).
"""

from __future__ import annotations

import sys

from rim_agents.cli import train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, __doc__ or "", default_env="CartPoleNoVel-v1", env_help="classic memory task id")


if __name__ == "__main__":
    sys.exit(main())
