"""Issue 12: do a trained RIM's units that read the cue stay switched off until the fork?

A RIM unit that is not among the ``top_k`` active ones keeps its state bit for bit, so a cue
read by units that then stay inactive is held unchanged however long the hallway is. For
each saved RIM agent on a MiniGrid-Memory task (with its run's environment options, e.g. the
T-maze of ``start_at_cue`` and ``fixed_candidates``), this plays episodes with sampled
actions and records which units are active at every step (``RIM.last_active``). It reports
which units were active at the first step, when the cue is in view, and the share of the
later steps at which any of them is active again: 0 means the cue's units stay off to the end.

    .venv/bin/python experiments/memory_unit_hold.py runs/memory_tmaze_s7/*rim*/final_model.zip \\
        --env MiniGrid-MemoryS7-v0 MiniGrid-MemoryS13-v0 --json docs/results/memory_unit_hold.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from study_summary import model_label, write_json  # experiments/ is the script's folder, so on sys.path

from envs.minigrid import make_minigrid
from rim_agents.evaluation import load_agent


def episode_activity(model: Any, env: Any, seed: int) -> np.ndarray:
    """``(steps, K)`` booleans: the actor's active units at each step of one episode."""
    obs, _ = env.reset(seed=seed)
    state, start, rows = None, np.ones(1, dtype=bool), []
    while True:
        action, state = model.predict(obs, state=state, episode_start=start)
        start = np.zeros(1, dtype=bool)
        rows.append(model.policy.lstm_actor.last_active[-1, 0, 0].numpy().copy())  # last layer
        obs, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            return np.array(rows)


def hold_summary(model: Any, env: Any, episodes: int) -> dict[str, Any]:
    """Units active at the first step, and how often any of them is active again later."""
    first_sets: dict[str, int] = {}
    later_steps = reactivated = 0
    for seed in range(episodes):
        activity = episode_activity(model, env, 3_000_000 + seed)
        cue_units = activity[0]
        key = ",".join(str(i) for i in np.flatnonzero(cue_units))
        first_sets[key] = first_sets.get(key, 0) + 1
        later = activity[1:]
        later_steps += len(later)
        reactivated += int((later & cue_units).any(axis=1).sum())
    return {
        "units_active_at_the_cue": first_sets,
        "later_steps": later_steps,
        "share_of_later_steps_with_a_cue_unit_active": reactivated / max(later_steps, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", type=Path, nargs="+", help="final_model.zip files of RIM agents")
    parser.add_argument("--env", nargs="+", default=["MiniGrid-MemoryS7-v0"], help="MiniGrid-Memory tasks")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per model and task")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print("| agent | task | units active at the cue (episodes) | later steps with a cue unit active |")
    print("|---|---|---|---|")
    for path in args.models:
        model, config = load_agent(path, device="cpu")
        if not hasattr(model.policy, "lstm_actor") or not hasattr(model.policy.lstm_actor, "last_active"):
            raise ValueError(f"{path} is not a RIM agent (its policy has no RIM actor)")
        env_kwargs = dict(config.hyperparams.get("env_kwargs") or {}) if config is not None else {}
        for env_id in args.env:
            row = {
                "agent": model_label(path),
                "env": env_id,
                **hold_summary(model, make_minigrid(env_id, **env_kwargs), args.episodes),
            }
            rows.append(row)
            sets = ", ".join(
                f"{{{key}}}: {count}" for key, count in sorted(row["units_active_at_the_cue"].items())
            )
            share = row["share_of_later_steps_with_a_cue_unit_active"]
            print(f"| {row['agent']} | {env_id} | {sets} | {share:.3f} of {row['later_steps']} |", flush=True)
    if args.json is not None:
        write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
