"""Train RecurrentPPO with a RIM (or a baseline: the LSTM, memoryless PPO) on a POPGym task.

    python scripts/train_popgym.py --env popgym-RepeatFirstEasy-v0 --policy rim -n 500000
    python scripts/train_popgym.py --env popgym-CountRecallEasy-v0 --policy lstm --seed 1
    python scripts/train_popgym.py --env popgym-PositionOnlyCartPoleEasy-v0 --policy ppo  # memoryless

Defaults come from the `popgym` block of rim_agents/hyperparams/ppo_rim.yml (POPGym's
memory size, heads and discount); override any of them with -params key:value. Returns are
POPGym's own, normalised to [-1, 1], so the best eval/mean_reward of a run is its MMER
(envs.popgym.max_mean_episodic_reward); by default a new run evaluates every 50,000 steps
over 20 episodes.
"""

from __future__ import annotations

import sys

from rim_agents.cli import train_main

# 40 points on a 2e6-step learning curve, each a mean over 20 episodes (at most 4,000 steps at Easy).
EVALUATION_DEFAULTS = {"eval_freq": 50_000, "eval_episodes": 20}


def main(argv: list[str] | None = None) -> int:
    return train_main(
        argv,
        __doc__ or "",
        default_env="popgym-RepeatFirstEasy-v0",
        env_help="POPGym id: popgym-<Task><Easy|Medium|Hard>-v0",
        new_run_defaults=EVALUATION_DEFAULTS,
    )


if __name__ == "__main__":
    sys.exit(main())
