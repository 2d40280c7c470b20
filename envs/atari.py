"""Atari 2600 games (ale-py, ROMs included) with the DeepMind preprocessing of SB3's ``AtariWrapper``.

Two id styles are supported, both stepping the emulator one frame at a time underneath so
that the preprocessing does the frame skipping:

- ``<Game>NoFrameskip-v4`` (e.g. ``PongNoFrameskip-v4``): the classic DQN/PPO protocol,
  deterministic emulator, no sticky actions.
- ``ALE/<Game>-v5`` (e.g. ``ALE/Pong-v5``): Machado et al. (2018)'s protocol. A v5 env
  skips 4 frames itself and repeats the previous action with probability 0.25 at every
  emulator frame (sticky actions). Here it is made with ``frameskip=1`` so that the skip
  (4, max-pooled over the last two frames) is the same wrapper as for v4; the sticky
  actions stay, as v5 intends.

The pipeline, innermost first (``AtariWrapper``'s wrappers in its order, with the
``Monitor`` placed where it records whole games in agent steps and unclipped points):

1. no-op reset: 1 to ``noop_max`` NOOP actions after each reset;
2. frame skip ``frame_skip`` with max-pooling of the last two frames;
3. ``TimeLimit(max_episode_steps)`` in agent steps, if given (ALE itself stops a game after
   108,000 frames, 30 minutes of play);
4. ``Monitor``: episode statistics are the game's score over the whole game;
5. episodic life (training only): losing a life ends the episode for the learner, not the game;
6. FIRE at reset for games that need it (its two steps count towards the game's length),
   and, when a lost life does not end the episode (evaluation), FIRE again after each lost
   life: otherwise an agent that never chooses FIRE (a deterministic one can) waits for the
   ball until the time limit;
7. 84x84 grayscale (``screen_size``): ALE's grayscale frame, area-averaged by Pillow
   (``WarpFrame`` needs OpenCV, which is not a dependency here);
8. reward clipping to {-1, 0, +1} (training only);
9. frame stacking of the last ``frame_stack`` frames along the channel axis, if > 1.

The observation is ``uint8`` of shape (``screen_size``, ``screen_size``, ``frame_stack``).
Evaluation environments (``make_env(..., evaluation=True)``) use
:data:`EVALUATION_KWARGS`: full games and unclipped rewards, so evaluation returns are game scores.
"""

from __future__ import annotations

from collections import deque
from typing import Any, SupportsFloat

import ale_py
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit
from PIL import Image
from stable_baselines3.common.atari_wrappers import (
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    MaxAndSkipEnv,
    NoopResetEnv,
)
from stable_baselines3.common.monitor import Monitor

from envs.ids import close_match_hint

gym.register_envs(ale_py)

# Options that evaluation environments override: the learner's conveniences are not the game.
EVALUATION_KWARGS: dict[str, Any] = {"terminal_on_life_loss": False, "clip_reward": False}
_V4_SUFFIX = "NoFrameskip-v4"


class ResizeFrame(gym.ObservationWrapper):
    """Resize a (H, W) grayscale frame to (size, size, 1) by area averaging.

    SB3's ``WarpFrame`` does the same with OpenCV (``INTER_AREA``), which is not among our
    dependencies; Pillow's ``BOX`` filter is its area-averaging equivalent.

    :param env: an environment with ``uint8`` (H, W) grayscale observations
    :param size: side of the square output
    """

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 2:
            raise ValueError(f"ResizeFrame needs (H, W) grayscale Box observations, got {space}")
        self.size = size
        self.observation_space = spaces.Box(low=0, high=255, shape=(size, size, 1), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        frame = Image.fromarray(observation).resize((self.size, self.size), Image.Resampling.BOX)
        return np.asarray(frame)[:, :, None]  # (size, size) -> (size, size, 1): channels last, as WarpFrame


class StackFrames(gym.Wrapper):
    """Concatenate the last ``n_frames`` observations along the channel (last) axis.

    At reset the first frame fills every slot (as DeepMind's ``FrameStack``), so the first
    observation of an episode is not padded with black frames.

    :param env: an environment with ``uint8`` (H, W, C) observations
    :param n_frames: number of frames to stack
    """

    def __init__(self, env: gym.Env, n_frames: int) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 3:
            raise ValueError(f"StackFrames needs (H, W, C) Box observations, got {space}")
        self._frames: deque[np.ndarray] = deque(maxlen=n_frames)
        self.observation_space = spaces.Box(
            low=np.repeat(space.low, n_frames, axis=-1),
            high=np.repeat(space.high, n_frames, axis=-1),
            dtype=space.dtype,  # type: ignore[arg-type]
        )

    def _observation(self) -> np.ndarray:
        return np.concatenate(self._frames, axis=-1)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        for _ in range(self._frames.maxlen or 0):
            self._frames.append(obs)
        return self._observation(), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(obs)
        return self._observation(), reward, terminated, truncated, info


class FireAfterLifeLoss(gym.Wrapper):
    """Press FIRE once after every life lost within an episode, as ``FireResetEnv`` does at reset.

    Games such as Breakout relaunch the ball only on FIRE. With lives lost inside one episode
    (no episodic life), an agent that never picks FIRE would stall until the time limit.
    The FIRE step's reward is added to the step that lost the life.

    :param env: an ALE environment whose action 1 is FIRE
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lives = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._lives = self.env.unwrapped.ale.lives()  # type: ignore[attr-defined]
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()  # type: ignore[attr-defined]
        if 0 < lives < self._lives and not (terminated or truncated):
            obs, fire_reward, terminated, truncated, info = self.env.step(1)
            reward = float(reward) + float(fire_reward)
            lives = self.env.unwrapped.ale.lives()  # type: ignore[attr-defined]
        self._lives = lives
        return obs, reward, terminated, truncated, info


def env_ids() -> list[str]:
    """Supported ids, sorted: image-observation ``<Game>NoFrameskip-v4`` and ``ALE/<Game>-v5``."""
    return sorted(
        env_id
        for env_id in gym.registry
        if "-ram" not in env_id
        and (env_id.endswith(_V4_SUFFIX) or (env_id.startswith("ALE/") and env_id.endswith("-v5")))
    )


def owns(env_id: str) -> bool:
    """Whether ``env_id`` names this family (registered or not: ``ALE/Pongg-v5`` is still ours).

    :param env_id: an environment id
    """
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id:
        return True
    spec = gym.registry.get(env_id)
    return spec is not None and isinstance(spec.entry_point, str) and spec.entry_point.startswith("ale_py")


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming close matches unless ``env_id`` is a supported Atari id.

    :param env_id: e.g. ``"PongNoFrameskip-v4"`` or ``"ALE/Pong-v5"``
    """
    known = env_ids()
    if env_id in known:
        return
    hint = close_match_hint(env_id, known, "ids are supported")
    if env_id in gym.registry:
        reason = "is an ale-py id this preprocessing does not take (it needs one frame per step and pixels)"
    else:
        reason = "is not a registered Atari game"
    raise ValueError(f"env_id={env_id!r} {reason}; use <Game>{_V4_SUFFIX} or ALE/<Game>-v5; {hint}")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def make_atari(
    env_id: str,
    seed: int | None = None,
    noop_max: int = 30,
    frame_skip: int = 4,
    screen_size: int = 84,
    terminal_on_life_loss: bool = True,
    clip_reward: bool = True,
    frame_stack: int = 1,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """Build one preprocessed Atari environment (the module docstring lists the wrappers in order).

    :param env_id: ``<Game>NoFrameskip-v4`` or ``ALE/<Game>-v5``
    :param seed: seeds the first ``reset`` (emulator, no-ops, sticky actions) and the action space
    :param noop_max: most no-op actions after a reset; 0 disables
    :param frame_skip: emulator frames per agent step (max-pooled over the last two); 1 disables
    :param screen_size: side of the square grayscale observation
    :param terminal_on_life_loss: end the learner's episode when a life is lost (training)
    :param clip_reward: clip rewards to their sign (training)
    :param frame_stack: number of most recent frames in an observation
    :param max_episode_steps: stop a game after this many agent steps; None keeps ALE's 108,000 frames
    :param render_mode: None, or ``"rgb_array"`` for video frames (full colour 210x160)
    :return: the environment; its observation space is a (screen_size, screen_size, frame_stack) ``uint8`` Box
    """
    check_env_id(env_id)
    if isinstance(noop_max, bool) or not isinstance(noop_max, int) or noop_max < 0:
        raise ValueError(f"noop_max={noop_max!r} must be a non-negative integer (0 disables no-op resets)")
    _positive("frame_skip", frame_skip)
    _positive("frame_stack", frame_stack)
    if isinstance(screen_size, bool) or not isinstance(screen_size, int) or screen_size < 36:
        raise ValueError(f"screen_size={screen_size!r} must be an integer >= 36 (NatureCNN's smallest input)")
    if max_episode_steps is not None:
        _positive("max_episode_steps", max_episode_steps)
    # One emulator frame per step for both id styles: MaxAndSkipEnv below does the skipping
    # (a v5 env would otherwise skip 4 frames itself, 16 in all).
    # ALE's own grayscale (luminance of its palette) spares an RGB conversion per frame.
    env = gym.make(env_id, frameskip=1, obs_type="grayscale", render_mode=render_mode)
    if noop_max > 0:
        env = NoopResetEnv(env, noop_max=noop_max)
    if frame_skip > 1:
        env = MaxAndSkipEnv(env, skip=frame_skip)
    if max_episode_steps is not None:
        env = TimeLimit(env, max_episode_steps)
    env = Monitor(env)
    if terminal_on_life_loss:
        env = EpisodicLifeEnv(env)
    if "FIRE" in env.unwrapped.get_action_meanings():  # type: ignore[union-attr]  # an ale_py AtariEnv
        env = FireResetEnv(env)
        if not terminal_on_life_loss:
            env = FireAfterLifeLoss(env)
    env = ResizeFrame(env, screen_size)
    if clip_reward:
        env = ClipRewardEnv(env)
    if frame_stack > 1:
        env = StackFrames(env, frame_stack)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


# The family builder that envs.make_env calls in each vectorised copy.
make = make_atari
