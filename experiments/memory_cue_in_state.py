"""How strongly a MiniGrid-Memory agent's recurrent state holds the cue, step by step to the fork.

    .venv/bin/python experiments/memory_cue_in_state.py runs/memory_view3_s7/*/final_model.zip
    .venv/bin/python experiments/memory_cue_in_state.py --fresh rim lstm --init-seeds 3 \
        -params "env_kwargs:{'view_size': 3, 'actions': 3}"

Two levels are taken that differ only in the cue (a key in one, a ball in the other): the
agent starts at x=1, where the cue is in view at the first step, and the candidates at the
fork are in the same order. The agent is walked the same way through both (forward to the
fork, the cell where it must turn north or south), and the actor's recurrent output state h
is read after each observation. The table gives ``|h_key - h_ball| / mean(|h_key|, |h_ball|)``
per step: at step 0 it is how much seeing the cue moves the state, at the fork how much of
that is left when the choice is made. A state that holds the cue keeps it away from 0; a
policy cannot use a cue its state no longer carries.

``--fresh rim lstm`` measures untrained policies built from the project YAML (with
``-params`` overrides), one per ``--init-seeds`` seed: the starting point of training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from study_summary import (  # experiments/ is the script's folder, so on sys.path
    fresh_minigrid_agent,
    model_label,
    write_json,
)

from envs.minigrid import make_minigrid
from rim_agents.evaluation import load_agent
from rim_agents.training import parse_overrides

FORWARD = 2  # MiniGrid's "move forward"


def _level(env: Any, cue: str, north: str, first_seed: int) -> int:
    """The first level seed from ``first_seed`` with the agent at x=1, ``cue`` in the start room
    and ``north`` the candidate north of the fork."""
    for seed in range(first_seed, first_seed + 10_000):
        env.reset(seed=seed)
        grid = env.unwrapped
        fork_x = grid.success_pos[0]
        cue_here = type(grid.grid.get(1, grid.height // 2 - 1)).__name__
        north_here = type(grid.grid.get(fork_x, 1)).__name__
        if int(grid.agent_pos[0]) == 1 and (cue_here, north_here) == (cue, north):
            return seed
    raise RuntimeError(f"no level with the agent at x=1, a {cue} cue and a {north} to the north")


def _states(model: Any, env: Any, seed: int) -> np.ndarray:
    """``(steps, hidden)``: the actor's h after each observation from the start to the fork."""
    obs, _ = env.reset(seed=seed)
    grid = env.unwrapped
    fork_x = int(grid.success_pos[0])
    state, starts, rows = None, np.ones(1, dtype=bool), []
    while True:
        _, state = model.predict(obs[None], state=state, episode_start=starts, deterministic=True)
        if state is None:
            raise ValueError("the agent has no recurrent state (memoryless PPO): give a RIM or LSTM agent")
        starts = np.zeros(1, dtype=bool)
        rows.append(np.ravel(state[0]))
        if int(grid.agent_pos[0]) == fork_x:
            return np.array(rows)
        obs, *_ = env.step(FORWARD)


def cue_in_state(model: Any, env: Any, first_seed: int = 0) -> list[float]:
    """Relative distance between the states after a key cue and after a ball cue, per step to the fork.

    :param model: a trained or fresh RIM / LSTM agent (``predict`` returns its states)
    :param env: a MiniGrid-Memory environment from ``envs.minigrid.make_minigrid``
    :param first_seed: where the search for the two levels starts
    :return: one value per observation, from the start (cue in view) to the fork
    """
    key = _states(model, env, _level(env, "Key", "Ball", first_seed))
    ball = _states(model, env, _level(env, "Ball", "Ball", first_seed))
    scale = (np.linalg.norm(key, axis=1) + np.linalg.norm(ball, axis=1)) / 2
    return (np.linalg.norm(key - ball, axis=1) / np.maximum(scale, 1e-12)).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", type=Path, nargs="*", help="final_model.zip files of RIM or LSTM agents")
    parser.add_argument("--fresh", nargs="*", default=[], choices=("rim", "lstm"), help="untrained policies")
    parser.add_argument("--init-seeds", type=int, default=3, help="fresh policies per kind (seeds 0..n-1)")
    parser.add_argument("-params", nargs="*", default=[], help="overrides for the fresh policies' YAML")
    parser.add_argument("--env", default="MiniGrid-MemoryS7-v0", help="MiniGrid-Memory task")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if not args.models and not args.fresh:
        parser.error("give final_model.zip files or --fresh rim/lstm")
    torch.set_num_threads(1)
    agents: list[tuple[str, Any, dict[str, Any]]] = []
    for path in args.models:
        model, config = load_agent(path, device="cpu")
        env_kwargs = dict(config.hyperparams.get("env_kwargs") or {}) if config is not None else {}
        agents.append((model_label(path), model, env_kwargs))
    overrides = parse_overrides(args.params)
    for policy in args.fresh:
        for seed in range(args.init_seeds):
            model, env_kwargs = fresh_minigrid_agent(policy, args.env, seed, overrides)
            agents.append((f"fresh {policy}, init seed {seed}", model, env_kwargs))
    rows = []
    for name, model, env_kwargs in agents:
        values = cue_in_state(model, make_minigrid(args.env, **env_kwargs))
        rows.append({"agent": name, "relative_distance": values})
        print(f"| {name} | " + " | ".join(f"{value:.3f}" for value in values) + " |", flush=True)
    if args.json is not None:
        write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
