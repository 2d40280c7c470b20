"""POPGym (Morad et al., ICLR 2023, arXiv 2303.01859): partially observable tasks for memory models.

Ids ``popgym-<Task><Easy|Medium|Hard>-v0``, every task and difficulty that POPGym registers
when imported (``env_ids()``; e.g. ``popgym-RepeatFirstEasy-v0``,
``popgym-PositionOnlyCartPoleEasy-v0``, ``popgym-CountRecallEasy-v0``). The paper's
StatelessCartPole is PositionOnlyCartPole. The two Labyrinth tasks are registered only when
the optional ``mazelib`` package is installed, which this project does not depend on.

The observation the policy reads is one flat ``float32`` vector, built as POPGym's own PPO
baselines build theirs (``popgym/baselines/ppo.py``: ``Antialias(PreviousAction(env))``):

1. the task's observation, one-hot encoded: a ``Discrete(n)`` becomes n values, a
   ``MultiDiscrete`` one one-hot block per entry, a ``Box`` stays as it is, a ``Tuple`` is
   the concatenation of its parts (:func:`encode`);
2. the previous action, encoded the same way (all zeros at the first step, when there is
   none), unless ``previous_action=False``;
3. a flag that is 1 at the first step of an episode and 0 after (POPGym's ``is_t0``).

Actions are the task's own: ``Discrete``, ``MultiDiscrete`` (Battleship, MineSweeper: a
board cell) or ``Box`` (the Pendulum tasks).

Returns are normalised by the tasks themselves: every POPGym task scales its rewards so
that an episode's return lies in [-1, 1] (1 is a perfect episode). The Monitor records the
unscaled reward, so the ``episode`` returns in ``info``, ``rollout/ep_rew_mean`` in
TensorBoard, ``eval/evaluations.npz`` and ``scripts/evaluate.py``'s ``mean_return`` are all
in the paper's units, and MMER (max mean episodic reward) is the largest mean return of a
run's evaluations (:func:`max_mean_episodic_reward`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import popgym  # noqa: F401  (importing registers the popgym-* ids with gymnasium)
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor

from envs.ids import check_known_id

DIFFICULTIES = ("Easy", "Medium", "Hard")
RETURN_RANGE = (-1.0, 1.0)  # the episode return of every POPGym task lies here
_PREFIX = "popgym-"
# Evaluation copies are built like training copies: POPGym has no training-only wrappers.
EVALUATION_KWARGS: dict[str, Any] = {}


def encoded_size(space: spaces.Space) -> int:
    """Length of :func:`encode`'s vector for values of ``space``.

    :param space: a ``Discrete``, ``MultiDiscrete``, ``MultiBinary``, ``Box`` or a ``Tuple`` of them
    """
    return int(encoding_bounds(space)[0].size)


def encoding_bounds(space: spaces.Space) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest value of each entry of :func:`encode`'s vector (one-hot entries: 0 and 1).

    :param space: see :func:`encoded_size`
    """
    if isinstance(space, spaces.Discrete):
        return np.zeros(int(space.n), np.float32), np.ones(int(space.n), np.float32)
    if isinstance(space, spaces.MultiDiscrete):
        total = int(space.nvec.sum())
        return np.zeros(total, np.float32), np.ones(total, np.float32)
    if isinstance(space, spaces.MultiBinary):
        size = int(np.prod(space.shape))
        return np.zeros(size, np.float32), np.ones(size, np.float32)
    if isinstance(space, spaces.Box):
        return space.low.astype(np.float32).ravel(), space.high.astype(np.float32).ravel()
    if isinstance(space, spaces.Tuple):
        parts = [encoding_bounds(part) for part in space.spaces]
        return np.concatenate([low for low, _ in parts]), np.concatenate([high for _, high in parts])
    raise ValueError(
        f"cannot encode values of {space}: supported are Discrete, MultiDiscrete, MultiBinary, Box and Tuple"
    )


def encode(space: spaces.Space, value: Any) -> np.ndarray:
    """One flat ``float32`` vector for ``value``: one-hot for discrete spaces, the values for a Box.

    :param space: see :func:`encoded_size`
    :param value: an element of ``space``
    :return: ``(encoded_size(space),)``
    """
    if isinstance(space, spaces.Discrete):
        out = np.zeros(int(space.n), np.float32)
        out[int(value) - int(space.start)] = 1.0
        return out
    if isinstance(space, spaces.MultiDiscrete):
        nvec = space.nvec.ravel()
        out = np.zeros(int(nvec.sum()), np.float32)
        # Entry i's block starts after the blocks of entries 0..i-1.
        starts = np.concatenate(([0], np.cumsum(nvec)[:-1]))
        out[starts + np.asarray(value).ravel() - space.start.ravel()] = 1.0
        return out
    if isinstance(space, (spaces.MultiBinary, spaces.Box)):
        return np.asarray(value, dtype=np.float32).ravel()
    if isinstance(space, spaces.Tuple):
        return np.concatenate([encode(part, item) for part, item in zip(space.spaces, value, strict=True)])
    raise ValueError(
        f"cannot encode values of {space}: supported are Discrete, MultiDiscrete, MultiBinary, Box and Tuple"
    )


class OneHotObservation(gym.ObservationWrapper):
    """The task's observation as one flat ``float32`` vector (:func:`encode`).

    :param env: a POPGym task
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._space = env.observation_space
        low, high = encoding_bounds(self._space)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return encode(self._space, observation)


class PreviousActionObservation(gym.Wrapper):
    """Append the previous action (:func:`encode`; zeros at the first step) and a first-step flag.

    The flag tells the first step apart from a later one that followed an action encoded as
    zeros (a Box action of 0), as POPGym's ``Antialias`` wrapper does.

    :param env: an environment with a flat ``Box`` observation (:class:`OneHotObservation`)
    :param previous_action: append the previous action; False appends the flag only
    """

    def __init__(self, env: gym.Env, previous_action: bool = True) -> None:
        super().__init__(env)
        box = env.observation_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1:
            raise ValueError(f"PreviousActionObservation needs a flat Box observation, got {box}")
        self.previous_action = previous_action
        if previous_action:
            action_low, action_high = encoding_bounds(env.action_space)
        else:
            action_low = action_high = np.zeros(0, np.float32)
        self._no_action = np.zeros(action_low.size, np.float32)
        self.observation_space = spaces.Box(
            np.concatenate([box.low, action_low, [0.0]]).astype(np.float32),
            np.concatenate([box.high, action_high, [1.0]]).astype(np.float32),
            dtype=np.float32,
        )

    def _observation(self, observation: np.ndarray, action: np.ndarray, first: bool) -> np.ndarray:
        return np.concatenate([observation, action, [float(first)]]).astype(np.float32)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._observation(obs, self._no_action, True), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        encoded = encode(self.env.action_space, action) if self.previous_action else self._no_action
        return self._observation(obs, encoded, False), reward, terminated, truncated, info


def env_ids() -> list[str]:
    """The POPGym ids registered with gymnasium, sorted."""
    return sorted(env_id for env_id in gym.registry if owns(env_id))


def owns(env_id: str) -> bool:
    """Whether ``env_id`` names this family (registered or not: a typo after the prefix is still ours).

    :param env_id: an environment id
    """
    return env_id.startswith(_PREFIX)


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches unless ``env_id`` is a registered POPGym task.

    :param env_id: e.g. ``"popgym-RepeatFirstEasy-v0"``
    """
    what = "a registered POPGym task"
    if "Labyrinth" in env_id:
        what += " (the Labyrinth tasks are registered only when the optional mazelib package is installed)"
    check_known_id(env_id, env_ids(), what)


def make_popgym(
    env_id: str, seed: int | None = None, previous_action: bool = True, render_mode: str | None = None
) -> gym.Env:
    """Build one POPGym task with the observation the module docstring describes (Monitor outermost).

    :param env_id: a registered ``popgym-<Task><Difficulty>-v0`` id
    :param seed: seeds the first ``reset`` and the action space; None leaves them unseeded
    :param previous_action: put the previous action in the observation (POPGym's baselines do)
    :param render_mode: must be None: POPGym tasks draw no frames, so there is no video
    :return: the environment; its observation space is a flat ``float32`` Box
    """
    check_env_id(env_id)
    if render_mode is not None:
        raise ValueError(f"render_mode={render_mode!r}: POPGym tasks draw no frames, so there is no video")
    if not isinstance(previous_action, bool):
        raise ValueError(f"previous_action={previous_action!r} must be True or False")
    # The passive checker's only complaint is CountRecall's info, whose counts array is the same object
    # at every step; nothing here keeps infos.
    env = gym.make(env_id, disable_env_checker=True)
    env = PreviousActionObservation(OneHotObservation(env), previous_action=previous_action)
    env = Monitor(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def max_mean_episodic_reward(run_dir: str | Path) -> float:
    """MMER of a training run: the largest mean return over its evaluations (``eval/evaluations.npz``).

    POPGym's returns are already normalised to [-1, 1], so this is the paper's MMER measured on
    evaluation episodes (the paper takes the mean over each training batch's episodes instead).

    :param run_dir: a run directory written by ``rim_agents.training.train`` with evaluations
    """
    path = Path(run_dir) / "eval" / "evaluations.npz"
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist: the run made no evaluations (eval_freq 0?)")
    with np.load(path) as evaluations:
        results = evaluations["results"]  # (evaluations, episodes)
    if results.size == 0:
        raise ValueError(f"{str(path)!r} holds no evaluations")
    return float(results.mean(axis=1).max())


# The family builder that envs.make_env calls in each vectorised copy.
make = make_popgym
