"""Issue 12: can the policies learn MiniGrid-Memory's memory at all? Behaviour cloning tells.

PPO leaves the RIM, the LSTM and the memoryless control at 0.5 on MemoryS7 at a 3x3 view
(docs/results.md, steps 1-7). This script takes reinforcement learning out: it trains each
policy's actor, exactly as the training core builds it (features extractor, recurrent core,
heads), to imitate a scripted agent that remembers the cue, with the cue in view at every
start (``start_at_cue``). A recurrent policy that learns to imitate it has shown it can
carry the cue to the fork; one that cannot has a problem no PPO setting will fix. The
memoryless control marks the ceiling without memory.

The scripted agent walks east to the fork, turns north (the decision step: the north
candidate is in view, the cue is not), then goes forward or turns south and goes forward.
Two targets for that decision:

- ``match`` (the task): forward if the north candidate matches the cue. Always a success.
  The right action is the XOR of two bits, the remembered cue and the candidate in view;
  neither alone says anything about it.
- ``cue`` (a control, a T-maze): forward if the cue is a key, whatever is in view. The same
  memory over the same steps, without the comparison. Its episodes may fail in the
  environment, so only its decision accuracy is reported.

Training episodes use level seeds from 100,000 up; evaluation uses levels 0 to
``--episodes - 1``, so no evaluation level was seen in training. Reported: decision accuracy
(the policy's most likely action at the decision step, fed the scripted agent's
observations), every ``--eval-every`` updates and at the end; for ``match`` also the
success of the cloned policy playing the task itself (sampled and greedy actions).

    python experiments/memory_cloning.py --policies rim lstm ppo --targets match cue --seeds 0 1 2 \\
        -params "env_kwargs:{'view_size': 3, 'actions': 3, 'start_at_cue': True}" \\
        policy_kwargs.features_extractor_kwargs.one_hot:True --json docs/results/memory_cloning.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from study_summary import fresh_minigrid_agent, write_json  # experiments/ is the script's folder

from envs.minigrid import make_minigrid
from rim_agents.training import parse_overrides

LEFT, FORWARD = 0, 2
TRAIN_LEVELS = 100_000


Episode = tuple[list[np.ndarray], list[int]]


def expert_episode(env: Any, seed: int, target: str) -> tuple[Episode, int]:
    """Observations and actions of the scripted agent on level ``seed`` (see the module
    docstring for ``target``), and the index of its decision step."""
    obs, _ = env.reset(seed=seed)
    base = env.unwrapped
    cue = base.grid.get(1, base.height // 2 - 1)
    north = base.grid.get(base.success_pos[0], base.height // 2 - 2)
    go_north = type(north) is type(cue) if target == "match" else cue.type == "key"
    plan = [FORWARD] * (base.success_pos[0] - int(base.agent_pos[0])) + [LEFT]
    decision = len(plan)
    plan += [FORWARD] if go_north else [LEFT, LEFT, FORWARD]
    observations, actions = [], []
    for action in plan:
        observations.append(obs)
        actions.append(action)
        obs, _, terminated, _, info = env.step(action)
    assert terminated and (target != "match" or info["is_success"]), "the scripted agent must succeed"
    return (observations, actions), decision


def lanes(episodes: list[Episode], count: int, length: int, rng: np.random.Generator):
    """``count`` lanes of ``length`` steps, each whole episodes drawn at random one after
    another (the last one cut off): observations, actions and episode starts, lane-major."""
    obs, actions, starts = [], [], []
    for _ in range(count):
        lane_obs: list[np.ndarray] = []
        lane_actions: list[int] = []
        lane_starts: list[float] = []
        while len(lane_obs) < length:
            episode_obs, episode_actions = episodes[rng.integers(len(episodes))]
            lane_obs += episode_obs
            lane_actions += episode_actions
            lane_starts += [1.0] + [0.0] * (len(episode_obs) - 1)
        obs += lane_obs[:length]
        actions += lane_actions[:length]
        starts += lane_starts[:length]
    return np.stack(obs), np.array(actions), np.array(starts, dtype=np.float32)


def decision_accuracy(model: Any, tests: list[tuple[Episode, int]]) -> float:
    """How often the policy's most likely action at the decision step is the scripted one,
    fed the scripted observations up to it."""
    right = 0
    for (observations, actions), decision in tests:
        state, start = None, np.ones(1, dtype=bool)
        for obs in observations[: decision + 1]:
            action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
            start = np.zeros(1, dtype=bool)
        right += int(action) == actions[decision]
    return right / len(tests)


def clone(
    model: Any, episodes: list[Episode], tests: list[tuple[Episode, int]], args: argparse.Namespace, seed: int
) -> tuple[float, list[tuple[int, float]]]:
    """Train the actor on the scripted actions. Returns the last update's mean log-likelihood
    and the decision accuracy every ``args.eval_every`` updates."""
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    rng = np.random.default_rng(seed)
    recurrent = hasattr(policy, "lstm_actor")
    lanes_per_batch, length = args.lanes, args.length
    log_likelihood, curve = float("nan"), []
    for update in range(1, args.updates + 1):
        policy.set_training_mode(True)
        obs, actions, starts = lanes(episodes, lanes_per_batch, length, rng)
        if obs.shape[1:] != policy.observation_space.shape:  # SB3 made the model's images channels-first
            obs = obs.transpose(0, 3, 1, 2)
        obs_t = torch.as_tensor(obs)
        actions_t = torch.as_tensor(actions)
        if recurrent:
            shape = (policy.lstm_actor.num_layers, lanes_per_batch, policy.lstm_actor.hidden_size)
            zeros = (torch.zeros(shape), torch.zeros(shape))
            _, log_prob, _ = policy.evaluate_actions(
                obs_t, actions_t, RNNStates(zeros, zeros), torch.as_tensor(starts)
            )
        else:
            _, log_prob, _ = policy.evaluate_actions(obs_t, actions_t)
        loss = -log_prob.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        log_likelihood = -loss.item()
        if update % args.eval_every == 0 or update == args.updates:
            policy.set_training_mode(False)
            curve.append((update, decision_accuracy(model, tests)))
    return log_likelihood, curve


def success_rate(model: Any, env: Any, episodes: int, deterministic: bool) -> float:
    """The cloned policy's success over levels 0..episodes-1."""
    successes = 0
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        state, start = None, np.ones(1, dtype=bool)
        while True:
            action, state = model.predict(obs, state=state, episode_start=start, deterministic=deterministic)
            start = np.zeros(1, dtype=bool)
            obs, _, terminated, truncated, info = env.step(int(action))
            if terminated or truncated:
                successes += bool(info["is_success"])
                break
    return successes / episodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="MiniGrid-MemoryS7-v0", help="MiniGrid-Memory task")
    policies = ("rim", "lstm", "ppo")
    parser.add_argument("--policies", nargs="+", default=list(policies), choices=policies)
    parser.add_argument("--targets", nargs="+", default=["match", "cue"], choices=("match", "cue"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="initialisation, batch seeds")
    parser.add_argument("--train-episodes", type=int, default=2000, help="scripted episodes to imitate")
    parser.add_argument("--updates", type=int, default=2000, help="Adam steps")
    parser.add_argument("--eval-every", type=int, default=250, help="updates between decision accuracies")
    parser.add_argument("--lanes", type=int, default=16, help="lanes per batch")
    parser.add_argument("--length", type=int, default=64, help="steps per lane")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam step size")
    parser.add_argument("--episodes", type=int, default=200, help="evaluation levels")
    parser.add_argument("-params", nargs="*", default=[], help="YAML overrides, as for the training scripts")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = parse_overrides(args.params)
    rows = []
    print("| target | policy | seed | log-likelihood (last batch) | decision accuracy by update | "
          "success, sampled / greedy | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for target in args.targets:
        for policy in args.policies:
            for seed in args.seeds:
                start = time.perf_counter()
                model, env_kwargs = fresh_minigrid_agent(policy, args.env, seed, overrides)
                env = make_minigrid(args.env, **env_kwargs)
                train = [expert_episode(env, TRAIN_LEVELS + i, target)[0] for i in range(args.train_episodes)]
                tests = [expert_episode(env, level, target) for level in range(args.episodes)]
                fit, curve = clone(model, train, tests, args, seed)
                row = {"target": target, "policy": policy, "seed": seed, "log_likelihood": fit,
                       "decision_accuracy": curve}  # fmt: skip
                success = "-"
                if target == "match":
                    row["success_sampled"] = success_rate(model, env, args.episodes, deterministic=False)
                    row["success_greedy"] = success_rate(model, env, args.episodes, deterministic=True)
                    success = f"{row['success_sampled']:.2f} / {row['success_greedy']:.2f}"
                row["seconds"] = time.perf_counter() - start
                accuracy = ", ".join(f"{update}: {value:.2f}" for update, value in curve)
                cells = [target, policy, seed, f"{fit:.3f}", accuracy, success, f"{row['seconds']:.0f}"]
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)
                rows.append(row)
    if args.json is not None:
        write_json({"command": " ".join(sys.argv), "env": args.env, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
