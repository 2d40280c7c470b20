"""Evaluation rollouts of saved agents: returns, success rate, videos and unit-activity plots.

The recurrent state is carried from step to step and reset at episode starts, exactly as
during training (``model.predict(obs, state, episode_start)``). Episodes run one after the
other in a single environment, so a video and an activity plot follow one agent's life.

Symbols:
    T - steps of an episode    Y - RIM layers    K - units per layer
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

import rim_agents.policies  # noqa: F401  (the RIM policy classes must be importable for load)
from envs import check_env_id, env_family
from rim_agents.checkpoints import latest_checkpoint
from rim_agents.checks import check_device, check_writable_file, check_writable_folder
from rim_agents.nn import RIM
from rim_agents.plotting import plot_unit_activity
from rim_agents.threads import torch_threads
from rim_agents.training import CONFIG_FILE, TrainConfig, load_run_config, make_vec_env

# act(observation, episode_start) -> action, for a vectorised environment of one copy.
ActFn = Callable[[Any, np.ndarray], np.ndarray]


def find_config(model_path: str | Path) -> TrainConfig | None:
    """The run configuration of a saved model: ``config.yaml`` beside it or one folder up (checkpoints/).

    :param model_path: a ``.zip`` written by the training core
    """
    for folder in (Path(model_path).parent, Path(model_path).parent.parent):
        if (folder / CONFIG_FILE).is_file():
            return load_run_config(folder)
    return None


def resolve_model(path: str | Path) -> tuple[Path, str]:
    """The model file that ``path`` names: itself, or in a run directory its best model, else its
    final model, else its latest checkpoint.

    :param path: a ``.zip`` or a run directory
    :return: (the ``.zip``, which of the run's models it is: ``"best"``, ``"final"``, ``"latest
        checkpoint"``, or ``"given"`` for a file)
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"model {str(path)!r} does not exist; pass a .zip or a run directory")
    if path.is_file():
        return path, "given"
    for name, which in (("best_model.zip", "best"), ("final_model.zip", "final")):
        if (path / name).is_file():
            return path / name, which
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise ValueError(
            f"{str(path)!r} is a folder with no best_model.zip, final_model.zip nor checkpoints/: pass a "
            "run directory written by the training scripts or a model .zip"
        )
    return checkpoint, "latest checkpoint"


def load_agent(model_path: str | Path, device: str = "auto") -> tuple[OnPolicyAlgorithm, TrainConfig | None]:
    """Load a saved agent (RecurrentPPO with a RIM or LSTM policy, or memoryless PPO) and its run
    configuration if there is one. The algorithm is read from the saved policy class.

    :param model_path: path to the ``.zip`` (see :func:`resolve_model` for a run directory)
    :param device: torch device
    """
    check_device(device)
    path = Path(model_path)
    if not path.is_file():
        raise ValueError(f"model {str(path)!r} does not exist")
    data, _, _ = load_from_zip_file(path, load_data=True, device="cpu")
    if data is None or not isinstance(data.get("policy_class"), type):
        raise ValueError(f"{str(path)!r} holds no Stable-Baselines3 model (no policy class in its data)")
    if not issubclass(data["policy_class"], ActorCriticPolicy):
        raise ValueError(
            f"{str(path)!r} holds a {data['policy_class'].__name__}, the policy of another algorithm: "
            "only PPO and RecurrentPPO agents (RIM, LSTM or memoryless) can be evaluated here"
        )
    recurrent = issubclass(data["policy_class"], RecurrentActorCriticPolicy)
    algorithm: type[OnPolicyAlgorithm] = RecurrentPPO if recurrent else PPO
    return algorithm.load(path, device=device), find_config(path)


def _evaluation_env(env_id: str, env_kwargs: dict[str, Any], seed: int, render: bool) -> VecEnv:
    render_mode = "rgb_array" if render else None
    try:
        check_env_id(env_id)
    except ValueError:
        if env_id not in gym.registry:
            raise
        # Any other gymnasium id, as it is: a CartPole-v1 agent evaluates on CartPole-v1.
        env: VecEnv = DummyVecEnv([lambda: Monitor(gym.make(env_id, render_mode=render_mode))])
    else:
        config = TrainConfig(env=env_id, hyperparams={"env_kwargs": env_kwargs})
        env = make_vec_env(config, 1, seed, render_mode=render_mode, evaluation=True)
    env.seed(seed)
    return env


def _same_family(env_id: str, other: str) -> bool:
    with contextlib.suppress(ValueError):
        return env_family(env_id) == env_family(other)
    return False


def run_episodes(
    act: ActFn,
    env: VecEnv,
    episodes: int,
    video_dir: str | Path | None = None,
    activity: Callable[[], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` episodes one after the other in a one-copy vectorised environment.

    :param act: chooses the action; called with ``episode_start`` True at each episode's first step
    :param env: vectorised environment with one copy (rgb_array rendering when ``video_dir`` is set)
    :param episodes: number of episodes
    :param video_dir: write ``episode_<i>.mp4`` for every episode there
    :param activity: called after each action of the first episode; returns the ``(Y, K)``
        active-unit mask of that step
    :return: returns, lengths, successes per episode (success None when the env has no
        ``is_success``) and, with ``activity``, ``active`` ``(T, Y, K)`` and ``rewards`` ``(T,)``
        of the first episode
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes} must be a positive integer")
    import imageio.v2 as imageio

    returns: list[float] = []
    lengths: list[int] = []
    successes: list[bool | None] = []
    active: list[np.ndarray] = []
    rewards: list[float] = []
    frames: list[Any] = []
    obs = env.reset()
    episode_start = np.ones((1,), dtype=bool)
    while len(returns) < episodes:
        if video_dir is not None:
            frames.append(env.envs[0].render())  # type: ignore[attr-defined]
        action = act(obs, episode_start)
        if activity is not None and not returns:
            active.append(activity())
        obs, reward, done, infos = env.step(action)
        if not returns:
            rewards.append(float(reward[0]))
        episode_start = done
        if done[0]:
            info = infos[0]
            returns.append(float(info["episode"]["r"]))
            lengths.append(int(info["episode"]["l"]))
            success = info.get("is_success")
            successes.append(None if success is None else bool(success))
            if video_dir is not None:
                Path(video_dir).mkdir(parents=True, exist_ok=True)
                imageio.mimsave(
                    Path(video_dir) / f"episode_{len(returns) - 1}.mp4", frames, fps=8, macro_block_size=1
                )
                frames = []
    result: dict[str, Any] = {"returns": returns, "lengths": lengths, "successes": successes}
    if activity is not None:
        result["active"] = np.stack(active)
        result["rewards"] = np.asarray(rewards)
    return result


def _summary(raw: dict[str, Any]) -> dict[str, Any]:
    returns = np.asarray(raw["returns"])
    known = [s for s in raw["successes"] if s is not None]
    return {
        "episodes": len(returns),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "mean_length": float(np.mean(raw["lengths"])),
        "success_rate": float(np.mean(known)) if known else None,
        "returns": raw["returns"],
        "lengths": raw["lengths"],
        "successes": raw["successes"],
    }


def evaluate(
    model_path: str | Path,
    env_id: str | None = None,
    episodes: int = 20,
    deterministic: bool = False,
    seed: int = 0,
    video_dir: str | Path | None = None,
    activations_path: str | Path | None = None,
    device: str = "auto",
    num_threads: int = 1,
) -> dict[str, Any]:
    """Evaluate a saved agent; the environment defaults to the one of its run.

    :param model_path: a ``.zip`` written by the training core (final or best model, a checkpoint)
    :param env_id: environment to evaluate on; None uses the run's. It may differ from the
        training environment (a MemoryS7 agent on MemoryS11) if the observations have the same shape
    :param episodes: number of episodes
    :param deterministic: take the most likely action instead of sampling
    :param seed: seed of the evaluation environment
    :param video_dir: write one mp4 per episode there
    :param activations_path: save a PNG of the units active at each step of the first episode
        (RIM policies only) with the rewards
    :param device: torch device
    :param num_threads: CPU threads torch uses meanwhile (restored afterwards)
    :return: mean_return, std_return, mean_length, success_rate, per-episode lists and the settings
    """
    with torch_threads(num_threads):
        return _evaluate(
            model_path, env_id, episodes, deterministic, seed, video_dir, activations_path, device
        )


def _evaluate(
    model_path: str | Path,
    env_id: str | None,
    episodes: int,
    deterministic: bool,
    seed: int,
    video_dir: str | Path | None,
    activations_path: str | Path | None,
    device: str,
) -> dict[str, Any]:
    """:func:`evaluate` with the thread count already set."""
    if video_dir is not None:
        check_writable_folder(video_dir, "--video")
    if activations_path is not None:
        check_writable_file(activations_path, "--activations")
    model, config = load_agent(model_path, device)
    core = getattr(model.policy, "lstm_actor", None)
    if activations_path is not None and not isinstance(core, RIM):
        raise ValueError(
            f"--activations needs a RIM policy; {str(model_path)!r} holds a {type(model.policy).__name__} "
            f"whose recurrent core is {'a ' + type(core).__name__ if core is not None else 'missing'}, "
            "which has no units"
        )
    if env_id is None:
        if config is None:
            raise ValueError(
                f"no {CONFIG_FILE} beside {str(model_path)!r} to tell its environment; "
                "pass one with --env (e.g. --env CartPole-v1)"
            )
        env_id = config.env
    # The run's env_kwargs are options of its family's factory; another family takes others.
    same_family = config is not None and _same_family(env_id, config.env)
    env_kwargs = dict(config.hyperparams.get("env_kwargs") or {}) if same_family else {}  # type: ignore[union-attr]
    env = _evaluation_env(env_id, env_kwargs, seed, render=video_dir is not None)
    if (env.observation_space, env.action_space) != (model.observation_space, model.action_space):
        env.close()
        trained_on = config.env if config is not None else "its training environment"
        raise ValueError(
            f"{env_id} does not fit the agent trained on {trained_on}: {env_id} gives observations "
            f"{env.observation_space} and actions {env.action_space}, the agent takes observations "
            f"{model.observation_space} and actions {model.action_space}"
        )
    state: tuple[np.ndarray, ...] | None = None

    def act(obs: Any, episode_start: np.ndarray) -> np.ndarray:
        nonlocal state
        action, state = model.predict(
            obs, state=state, episode_start=episode_start, deterministic=deterministic
        )
        return action

    def activity() -> np.ndarray:
        assert isinstance(core, RIM) and core.last_active is not None  # checked above; set by predict
        return core.last_active[0, :, 0].cpu().numpy()  # (1, Y, 1, K) -> (Y, K)

    try:
        raw = run_episodes(act, env, episodes, video_dir, activity if activations_path is not None else None)
    finally:
        env.close()
    result = {
        "model": str(model_path),
        "env": env_id,
        "deterministic": deterministic,
        "seed": seed,
        **_summary(raw),
    }
    if video_dir is not None:
        result["video_dir"] = str(video_dir)
    if activations_path is not None:
        title = f"{env_id}, episode 0: return {result['returns'][0]:.2f}, {result['lengths'][0]} steps"
        figure = plot_unit_activity(raw["active"], raw["rewards"], title)
        Path(activations_path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(activations_path, dpi=100, bbox_inches="tight")
        result["activations"] = str(activations_path)
    return result


def evaluate_random(
    env_id: str, episodes: int = 20, seed: int = 0, env_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The same statistics for a policy that samples actions uniformly, the baseline to beat.

    :param env_id: environment id
    :param episodes: number of episodes
    :param seed: seed of the environment and of the action sampling
    :param env_kwargs: options of the environment factory
    """
    env = _evaluation_env(env_id, dict(env_kwargs or {}), seed, render=False)
    env.action_space.seed(seed)

    def act(obs: Any, episode_start: np.ndarray) -> np.ndarray:
        return np.array([env.action_space.sample()])

    try:
        raw = run_episodes(act, env, episodes)
    finally:
        env.close()
    return {"model": "random", "env": env_id, "deterministic": False, "seed": seed, **_summary(raw)}


def format_result(result: dict[str, Any]) -> str:
    """One line: mean +- std return, mean length, success rate.

    :param result: a dict returned by :func:`evaluate` or :func:`evaluate_random`
    """
    success = "n/a" if result["success_rate"] is None else f"{result['success_rate']:.2f}"
    return (
        f"{result['env']} {result['model']}: "
        f"return {result['mean_return']:.3f} +- {result['std_return']:.3f} "
        f"over {result['episodes']} episodes, mean length {result['mean_length']:.1f}, success rate {success}"
    )


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Write an evaluation result as JSON.

    :param result: a dict returned by :func:`evaluate` or :func:`evaluate_random`
    :param path: output file
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
