"""Success of MiniGrid-Memory agents split by where the episode started.

    .venv/bin/python experiments/memory_by_start.py runs/memory_view3_s7/*/final_model.zip --episodes 300

The agent starts facing east at a random x in the start room and hallway; the cue sits north
of x=1. Facing east, the agent sees it at the first step only when it starts at x=1; from
anywhere else it must turn back to see it (here: stand at x <= 2 facing west). An agent that
uses memory succeeds more often in the episodes where it saw the cue than the 0.5 a
memoryless walk to either candidate gets. Episodes are split into: started at x=1; started
further east and looked back; started further east and never looked back.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from study_summary import model_label, write_json  # experiments/ is the script's folder, so on sys.path

from envs.minigrid import make_minigrid
from rim_agents.evaluation import load_agent

GROUPS = (
    "started at x=1 (cue in view)",
    "started further east, looked back",
    "started further east, never looked",
)


def success_by_start(model_path: Path, env_id: str, episodes: int, seed: int) -> dict[str, dict[str, float]]:
    """Episodes and success rate (None without episodes) per start group, sampled actions, levels
    ``seed .. seed + episodes - 1``."""
    model, config = load_agent(model_path, device="cpu")
    env_kwargs = dict(config.hyperparams.get("env_kwargs") or {}) if config is not None else {}
    env = make_minigrid(env_id, **env_kwargs)
    outcomes: dict[str, list[bool]] = {group: [] for group in GROUPS}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        grid = env.unwrapped
        start_x = int(grid.agent_pos[0])
        state, starts, done, success, looked = None, np.ones(1, dtype=bool), False, False, False
        while not done:
            action, state = model.predict(obs[None], state=state, episode_start=starts, deterministic=False)
            starts = np.zeros(1, dtype=bool)
            obs, reward, terminated, truncated, _ = env.step(int(action[0]))
            done, success = terminated or truncated, float(reward) > 0
            looked |= int(grid.agent_pos[0]) <= 2 and int(grid.agent_dir) == 2  # facing west near the cue
        group = GROUPS[0] if start_x == 1 else GROUPS[1] if looked else GROUPS[2]
        outcomes[group].append(success)
    return {g: {"episodes": len(v), "success": float(np.mean(v)) if v else None} for g, v in outcomes.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", type=Path, nargs="+", help="final_model.zip files of the training core")
    parser.add_argument("--env", default="MiniGrid-MemoryS7-v0", help="MiniGrid-Memory task")
    parser.add_argument("--episodes", type=int, default=300, help="episodes per model")
    parser.add_argument("--seed", type=int, default=10_000, help="first level seed")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print("| run | " + " | ".join(f"{group}: episodes, success" for group in GROUPS) + " |")
    print("|---|" + "---|" * len(GROUPS))
    for path in args.models:
        result = success_by_start(path, args.env, args.episodes, args.seed)
        rows.append({"model": str(path), **result})
        cells = " | ".join(
            f"{result[g]['episodes']}, "
            + ("-" if result[g]["success"] is None else f"{result[g]['success']:.2f}")
            for g in GROUPS
        )
        print(f"| {model_label(path)} | {cells} |")
    if args.json is not None:
        write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
