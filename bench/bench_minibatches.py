"""Minibatch layouts for RimPPO: sb3-contrib's padded episodes vs env lanes vs packed episodes.

Three layouts of the same rollout, in this process, interleaved repeat by repeat:

- ``sb3-contrib``: ``RecurrentRolloutBuffer``, one sequence per episode piece, padded to the
  minibatch's longest (what ``RecurrentPPO`` does, and ``RimPPO`` did before);
- ``env lanes``: each minibatch is ``batch_size / n_steps`` envs' whole lanes of ``n_steps``
  steps, resets inside the RIM (a candidate, defined here only);
- ``packed``: :class:`rim_agents.buffers.RimRolloutBuffer`, whole episode pieces packed into
  lanes as long as the minibatch's longest piece (what ``RimPPO`` uses now).

For each layout it reports, per epoch, computed slots / real steps and sequential RIM steps
(the sum of the minibatches' lane lengths), then two times as ratios to sb3-contrib's layout
(medians over repeats, of wall-clock and of this process's CPU time): ``train()`` on one
identical rollout from identical weights, and ``learn()`` for one rollout (collection and
training) of the same agent, layouts taking turns. The regime is a fresh agent of the YAML
block, or a saved agent (``--checkpoint``, e.g. one trained by ``make main``, whose episodes
are short).

    python bench/bench_minibatches.py                                      # fresh, 16 envs, batch 512
    python bench/bench_minibatches.py --checkpoint runs/main/<run>/checkpoints/rl_model_150528_steps.zip
    python bench/bench_minibatches.py --checkpoint ... -params n_envs:64 batch_size:4096 --no-learn
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch as th
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from stable_baselines3.common.callbacks import CallbackList

from rim_agents.buffers import RimRolloutBuffer
from rim_agents.ppo import RimPPO
from rim_agents.training import build_algorithm_kwargs, make_config, make_vec_env, parse_overrides


class EnvLaneBuffer(RimRolloutBuffer):
    """The env-lane candidate: minibatches of ``batch_size // n_steps`` whole env lanes."""

    def _layouts(self, batch_size: int | None) -> list[np.ndarray]:
        super()._layouts(batch_size)
        n_steps = self.buffer_size
        lanes = self.n_envs if batch_size is None else max(batch_size // n_steps, 1)
        envs = np.random.permutation(self.n_envs)
        # (n_lanes, T) env-major step indices e * T + t
        return [
            envs[begin : begin + lanes, None] * n_steps + np.arange(n_steps)
            for begin in range(0, self.n_envs, lanes)
        ]


LAYOUTS: dict[str, type[RecurrentRolloutBuffer]] = {
    "sb3-contrib": RecurrentRolloutBuffer,
    "env lanes": EnvLaneBuffer,
    "packed": RimRolloutBuffer,
}

_BUFFER_ARRAYS = (
    "observations",
    "actions",
    "rewards",
    "returns",
    "episode_starts",
    "values",
    "log_probs",
    "advantages",
    "hidden_states_pi",
    "cell_states_pi",
    "hidden_states_vf",
    "cell_states_vf",
)


def use_layout(model: RimPPO, layout: str, source: RecurrentRolloutBuffer | None = None) -> None:
    """Give ``model`` a fresh buffer of ``layout``, holding a copy of ``source``'s rollout if given."""
    old = model.rollout_buffer
    buffer = LAYOUTS[layout](
        model.n_steps,
        model.observation_space,
        model.action_space,
        old.hidden_state_shape,
        model.device,
        gamma=model.gamma,
        gae_lambda=model.gae_lambda,
        n_envs=model.n_envs,
    )
    if source is not None:
        for name in _BUFFER_ARRAYS:
            setattr(buffer, name, getattr(source, name).copy())
        buffer.pos, buffer.full = source.pos, source.full
    model.rollout_buffer = buffer


def epoch_shape(model: RimPPO) -> tuple[float, int, int]:
    """One epoch of the model's buffer: (computed slots / real steps, sequential steps, minibatches)."""
    slots = real = sequential = minibatches = 0
    for sample in model.rollout_buffer.get(model.batch_size):
        n_lanes = sample.lstm_states.pi[0].shape[1]
        slots += len(sample.mask)
        real += int(sample.mask.sum())
        sequential += len(sample.mask) // n_lanes
        minibatches += 1
    return slots / real, sequential, minibatches


def pieces(episode_starts: np.ndarray) -> tuple[int, float]:
    """Episode pieces of a rollout ``(T, E)`` (cut at episode starts and at t = 0) and their mean length."""
    cut = episode_starts != 0
    cut[0] = True
    return int(cut.sum()), cut.size / cut.sum()


def collect_one_rollout(model: RimPPO) -> None:
    callback = CallbackList([])
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and this process's CPU seconds of one call (CPU time is what other jobs on a
    shared machine disturb least)."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def ratios(times: list[tuple[float, float]], base: list[tuple[float, float]]) -> str:
    """Median wall and CPU time of ``times`` over those of ``base``, as ``"0.50x / 0.48x"``."""
    wall, cpu = (statistics.median(column) for column in zip(*times, strict=True))
    base_wall, base_cpu = (statistics.median(column) for column in zip(*base, strict=True))
    return f"{wall / base_wall:.2f}x / {cpu / base_cpu:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="MiniGrid-MemoryS7-v0", help="environment id")
    parser.add_argument("--checkpoint", default=None, help="saved RimPPO agent (the learned regime)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per layout (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-learn", action="store_true", help="time train() only, not learn()")
    parser.add_argument("-params", nargs="*", default=[], help="YAML overrides key:value (n_envs too)")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    overrides = parse_overrides(args.params)
    n_envs = overrides.pop("n_envs", None)
    config = make_config(args.env, overrides=overrides, n_envs=n_envs)
    algorithm, policy_name, kwargs = build_algorithm_kwargs(config)
    env = make_vec_env(config, config.n_envs, seed=0)
    if args.checkpoint:
        kept = {key: kwargs[key] for key in ("n_steps", "batch_size", "n_epochs")}
        model = RimPPO.load(args.checkpoint, env=env, device="cpu", **kept)
        regime = f"learned ({args.checkpoint}, {model.num_timesteps} steps)"
    else:
        model = algorithm(policy_name, env, seed=0, device="cpu", **kwargs)
        regime = "fresh"
    print(f"# {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(
        f"# {args.env}, {regime}: {config.n_envs} envs x {model.n_steps} steps, batch {model.batch_size}, "
        f"{model.n_epochs} epochs, torch {th.__version__}, {th.get_num_threads()} thread(s), "
        f"load average {os.getloadavg()[0]:.2f}"
    )

    model.learn(config.n_envs * model.n_steps)  # warm-up: allocations, first-call overheads
    use_layout(model, "sb3-contrib")
    collect_one_rollout(model)
    rollout = model.rollout_buffer
    n_pieces, mean_piece = pieces(rollout.episode_starts)
    print(f"# the timed rollout: {n_pieces} episode pieces, {mean_piece:.1f} steps on average")

    weights = {k: v.clone() for k, v in model.policy.state_dict().items()}
    optimizer = model.policy.optimizer.state_dict()
    shapes: dict[str, tuple[float, int, int]] = {}
    train_s: dict[str, list[tuple[float, float]]] = {name: [] for name in LAYOUTS}
    for repeat in range(args.repeats):
        for name in LAYOUTS:
            model.policy.load_state_dict(weights)
            model.policy.optimizer.load_state_dict(optimizer)
            use_layout(model, name, rollout)
            if repeat == 0:
                shapes[name] = epoch_shape(model)
            train_s[name].append(timed(model.train))

    learn_s: dict[str, list[tuple[float, float]]] = {name: [] for name in LAYOUTS}
    if not args.no_learn:
        for _ in range(args.repeats):
            for name in LAYOUTS:
                use_layout(model, name)
                learn_s[name].append(
                    timed(lambda: model.learn(config.n_envs * model.n_steps, reset_num_timesteps=False))
                )

    print(
        "| layout | minibatches | slots / real steps | sequential steps per epoch "
        "| train() wall / CPU time | learn() wall / CPU time per rollout |"
    )
    print("|---|---|---|---|---|---|")
    for name in LAYOUTS:
        ratio, sequential, minibatches = shapes[name]
        train = ratios(train_s[name], train_s["sb3-contrib"])
        learn = ratios(learn_s[name], learn_s["sb3-contrib"]) if learn_s[name] else "-"
        print(f"| {name} | {minibatches} | {ratio:.2f}x | {sequential} | {train} | {learn} |")
    for what, seconds in (("train()", train_s), ("learn() per rollout", learn_s)):
        if seconds["sb3-contrib"]:
            wall, cpu = (statistics.median(column) for column in zip(*seconds["sb3-contrib"], strict=True))
            print(f"# sb3-contrib medians, {what}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
