"""MiniGrid environments for RecurrentPPO: wrappers, seeding and episode statistics.

Observation modes (``observation=``):

- ``"symbolic"`` (default): the agent's egocentric 7x7 view as MiniGrid's symbolic
  encoding ``(object, colour, state)`` per tile, ``uint8`` of shape (7, 7, 3). Values are
  small integers, not pixels: the policy must not divide them by 255
  (``normalize_images=False``) and needs a small CNN, not NatureCNN.
- ``"rgb"``: the same partial view rendered as pixels, (7 * tile_size, 7 * tile_size, 3).

``fully_observable=True`` shows the whole grid instead of the agent's view, in either mode
(symbolic: (width, height, 3); rgb: (width * tile_size, height * tile_size, 3)).
``view_size=v`` (odd, >= 3) narrows or widens the agent's view to v x v (symbolic: (v, v, 3);
a 3x3 view is given channels-first, (3, 3, 3) with the codes first, so that SB3 and
``MiniGridCNN`` cannot mistake its layout). ``actions=n`` keeps MiniGrid's first n actions
(left, right, forward, pickup, drop, toggle, done): ``actions=3`` is all a Memory task needs.
``start_at_cue=True`` (Memory tasks only) starts every episode with the cue in view;
``fixed_candidates=True`` (Memory tasks only) always puts the key north and the ball south.

Success in MiniGrid is a positive reward at the end of an episode (the environment pays
``1 - 0.9 * step_count / max_steps`` for reaching the goal and 0 otherwise); the factory
writes it to ``info["is_success"]`` at the last step, which SB3 turns into
``rollout/success_rate`` and ``eval/success_rate``.
"""

from __future__ import annotations

import abc
from typing import Any, SupportsFloat

import gymnasium as gym
import minigrid  # noqa: F401  (importing registers the MiniGrid-* ids with gymnasium)
import numpy as np
from gymnasium import spaces
from minigrid.core.world_object import Ball, Key
from minigrid.envs.memory import MemoryEnv
from minigrid.wrappers import (
    FullyObsWrapper,
    ImgObsWrapper,
    RGBImgObsWrapper,
    RGBImgPartialObsWrapper,
)
from stable_baselines3.common.monitor import Monitor

from envs.ids import check_known_id

OBSERVATION_MODES = ("symbolic", "rgb")
# Evaluation copies are built exactly like training copies: MiniGrid has no training-only wrappers.
EVALUATION_KWARGS: dict[str, Any] = {}


class SuccessInfo(gym.Wrapper):
    """Set ``info["is_success"]`` at the last step of an episode: True when the reward there is positive.

    ``SuccessInfo(env)`` wraps a MiniGrid environment (``gym.Wrapper``'s constructor).
    """

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            info["is_success"] = bool(float(reward) > 0.0)
        return obs, reward, terminated, truncated, info


class ChannelsFirst(gym.ObservationWrapper):
    """``(H, W, C) -> (C, H, W)``: an image layout SB3 cannot mistake when ``H == W == C``.

    :param env: an environment with a channels-last ``Box`` image observation
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        box = env.observation_space
        assert isinstance(box, spaces.Box)
        self.observation_space = spaces.Box(
            box.low.transpose(2, 0, 1),
            box.high.transpose(2, 0, 1),
            dtype=box.dtype,  # type: ignore[arg-type]
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(observation.transpose(2, 0, 1))


class FirstActions(gym.ActionWrapper):
    """Only the first ``n`` of a MiniGrid environment's actions: ``Discrete(n)``, same indices.

    MiniGrid gives every task its 7 actions; the Memory tasks need only the first 3 (turn left,
    turn right, forward), and the 4 others (pickup, drop, toggle, done) do nothing there but
    spend steps. Recurrent-PPO reference code trains MemoryS9 with these 3 (MarcoMeter/
    recurrent-ppo-truncated-bptt, ``environments/minigrid_env.py``).

    :param env: a MiniGrid environment
    :param n: actions kept, 1 to the environment's number
    """

    def __init__(self, env: gym.Env, n: int) -> None:
        super().__init__(env)
        self.action_space = spaces.Discrete(n)

    def action(self, action: Any) -> Any:
        return action


class MemoryLevelEdit(gym.Wrapper, abc.ABC):
    """A change to each level a MiniGrid-Memory task draws, made after its ``reset``.

    Subclasses name their ``make_minigrid`` option and :meth:`edit` the level; the first
    observation is rendered again from the edited level.

    :param env: a MiniGrid Memory environment (``MemoryEnv``)
    """

    option = ""

    def __init__(self, env: gym.Env) -> None:
        if not isinstance(env.unwrapped, MemoryEnv):
            raise ValueError(
                f"{self.option}=True needs a MiniGrid-Memory task (MemoryEnv), got "
                f"{type(env.unwrapped).__name__}; drop {self.option} for other tasks"
            )
        super().__init__(env)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        _, info = self.env.reset(**kwargs)
        base = self.env.unwrapped
        assert isinstance(base, MemoryEnv)
        self.edit(base)
        return base.gen_obs(), info

    @abc.abstractmethod
    def edit(self, base: MemoryEnv) -> None:
        """Change the level ``base`` has just drawn, in place."""


class StartAtCue(MemoryLevelEdit):
    """MiniGrid-Memory with the agent always starting beside the cue, at the start room's west end.

    ``MemoryEnv`` starts the agent facing east at a random x from 1 to the hallway's end, and
    the cue sits at ``(1, height // 2 - 1)``, north of x=1. So at a narrow view the cue is in
    view at the first step only in the episodes that start at x=1 (a quarter of them in
    MemoryS7), and in the others the agent must turn back to see it. This wrapper moves the
    start to ``(1, height // 2)``, facing east, after the environment has drawn its level: the
    cue, the candidates and their order are the environment's own, and the first observation
    is rendered again from the new position. Every episode then tests holding the cue, not
    finding it; the cue is still out of view at the fork, so a memoryless policy stays at 0.5.

    :param env: a MiniGrid Memory environment (``MemoryEnv``)
    """

    option = "start_at_cue"

    def edit(self, base: MemoryEnv) -> None:
        base.agent_pos = (1, base.height // 2)
        base.agent_dir = 0


class FixedCandidates(MemoryLevelEdit):
    """MiniGrid-Memory with the candidates in one order: the key north of the fork, the ball south.

    ``MemoryEnv`` draws the candidates' order, so the way to go is a comparison: the
    remembered cue against the candidate in view (an XOR of two bits; neither alone says
    anything about it). With the order fixed, the cue alone says it: north after a key, south
    after a ball. That is the T-maze of recurrent RL (Bakker, "Reinforcement learning with
    long short-term memory", NIPS 2001): the same memory over the same hallway, without the
    comparison. The cue and the start are the environment's own draws; the success and
    failure cells follow the cue. The first observation is rendered again.

    :param env: a MiniGrid Memory environment (``MemoryEnv``)
    """

    option = "fixed_candidates"

    def edit(self, base: MemoryEnv) -> None:
        x, middle = base.success_pos[0], base.height // 2
        base.grid.set(x, middle - 2, Key("green"))
        base.grid.set(x, middle + 2, Ball("green"))
        north, south = (x, middle - 1), (x, middle + 1)
        cue_is_key = isinstance(base.grid.get(1, middle - 1), Key)
        base.success_pos, base.failure_pos = (north, south) if cue_is_key else (south, north)


def env_ids() -> list[str]:
    """All MiniGrid ids registered with gymnasium, sorted."""
    return sorted(env_id for env_id in gym.registry if owns(env_id))


def owns(env_id: str) -> bool:
    """Whether ``env_id`` names this family (registered or not: a typo after the prefix is still ours).

    :param env_id: an environment id
    """
    return env_id.startswith("MiniGrid-")


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches when ``env_id`` is not a registered MiniGrid id.

    :param env_id: e.g. ``"MiniGrid-MemoryS7-v0"``
    """
    check_known_id(env_id, env_ids(), "a registered MiniGrid environment")


def make_minigrid(
    env_id: str,
    seed: int | None = None,
    observation: str = "symbolic",
    fully_observable: bool = False,
    tile_size: int = 8,
    render_mode: str | None = None,
    max_steps: int | None = None,
    view_size: int | None = None,
    actions: int | None = None,
    start_at_cue: bool = False,
    fixed_candidates: bool = False,
) -> gym.Env:
    """Build one wrapped MiniGrid environment (Monitor outermost, so episode statistics are raw returns).

    :param env_id: a registered MiniGrid id
    :param seed: seeds the first ``reset`` and the action space; None leaves them unseeded
    :param observation: ``"symbolic"`` (7x7x3 object/colour/state codes) or ``"rgb"`` (pixels)
    :param fully_observable: observe the whole grid instead of the agent's 7x7 view
    :param tile_size: pixels per tile in ``"rgb"`` mode
    :param render_mode: None, or ``"rgb_array"`` for video frames
    :param max_steps: episode step limit; None keeps the environment's own
    :param view_size: side of the agent's square view (odd, at least 3; the environment's
        ``agent_view_size``, which gives the same symbolic codes as MiniGrid's ``ViewSizeWrapper``
        and also sizes the rgb view); None keeps the environment's 7. A smaller view hides more
        of the room, so a memory task needs more memory
    :param actions: keep only MiniGrid's first ``actions`` actions (3: turn left, turn right,
        forward, all a Memory task needs); None keeps all 7
    :param start_at_cue: Memory tasks only: start every episode at the start room's west end
        with the cue in view (:class:`StartAtCue`)
    :param fixed_candidates: Memory tasks only: the key always north, the ball south, so that
        the cue alone says which way to go (a T-maze; :class:`FixedCandidates`)
    :return: the environment; its observation space is a (H, W, 3) ``uint8`` Box
    """
    check_env_id(env_id)
    if observation not in OBSERVATION_MODES:
        raise ValueError(f"observation={observation!r} is not supported; use one of {OBSERVATION_MODES}")
    if tile_size < 1:
        raise ValueError(f"tile_size={tile_size} must be a positive number of pixels")
    kwargs: dict[str, Any] = {"render_mode": render_mode}
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError(f"max_steps={max_steps} must be a positive number of steps")
        kwargs["max_steps"] = max_steps
    if view_size is not None:
        if (
            isinstance(view_size, bool)
            or not isinstance(view_size, int)
            or view_size < 3
            or view_size % 2 == 0
        ):
            raise ValueError(f"view_size={view_size!r} must be an odd integer >= 3 (the agent sees a square)")
        # The environment's own agent_view_size, not minigrid's ViewSizeWrapper: the wrapper
        # narrows the symbolic codes only, and the rgb view is rendered from the environment's size.
        kwargs["agent_view_size"] = view_size
    env = gym.make(env_id, **kwargs)
    if actions is not None:
        available = int(env.action_space.n)  # type: ignore[attr-defined]
        if isinstance(actions, bool) or not isinstance(actions, int) or not 1 <= actions <= available:
            raise ValueError(
                f"actions={actions!r} must be an integer from 1 to {available} (the first actions of "
                f"{env_id}: left, right, forward, pickup, drop, toggle, done); 3 keeps the navigation actions"
            )
        env = FirstActions(env, actions)
    for name, value in (("start_at_cue", start_at_cue), ("fixed_candidates", fixed_candidates)):
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be True or False")
    if fixed_candidates:
        env = FixedCandidates(env)
    if start_at_cue:
        env = StartAtCue(env)
    if observation == "rgb":
        env = (
            RGBImgObsWrapper(env, tile_size) if fully_observable else RGBImgPartialObsWrapper(env, tile_size)
        )
    elif fully_observable:
        env = FullyObsWrapper(env)
    # MiniGrid observations are dicts with the mission string; the image alone is what the policy reads.
    env = ImgObsWrapper(env)
    if env.observation_space.shape == (3, 3, 3):
        # A 3x3 view with 3 codes per cell: SB3 would read (3, 3, 3) as channels-first (it takes the
        # first of equal axes), so it is made so.
        env = ChannelsFirst(env)
    env = SuccessInfo(env)
    env = Monitor(env, info_keywords=("is_success",))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


# The family builder that envs.make_env calls in each vectorised copy.
make = make_minigrid
