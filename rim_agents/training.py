"""Training core: RecurrentPPO with a RIM, the LSTM baseline or memoryless PPO, from per-environment YAML.

One entry point for the command-line scripts and for sweep workers::

    config = make_config("MiniGrid-MemoryS7-v0", policy="rim", seed=0, overrides={"n_steps": 64})
    run_dir = train(config)                       # logs/MiniGrid-MemoryS7-v0__rim__0__<time>
    run_dir = train(config, run_dir=run_dir)      # continues from the run's latest checkpoint

A run directory holds ``config.yaml`` (the resolved configuration), ``tb/`` (TensorBoard
events), ``checkpoints/rl_model_<steps>_steps.zip``, ``best_model.zip`` (best evaluation),
``eval/evaluations.npz`` and ``final_model.zip`` (the model files' saving, listing and loading
are :mod:`rim_agents.checkpoints`). The folder is one level deep for every id: a namespace's
``/`` is written ``+`` (:func:`run_folder_env`). Checkpoints are written when a rollout
starts, i.e. after the previous update finished, so the step count in a checkpoint is work
that has been trained on; resuming loads one and runs the remaining steps with
``reset_num_timesteps=False`` into the same TensorBoard directory, reseeded with
:func:`resume_seed` so that it does not replay the levels and action noise of step 0.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib
import inspect
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import TensorBoardOutputFormat, configure
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecTransposeImage
from torch.utils.tensorboard import SummaryWriter

from envs import check_env_id, env_family, make_env
from rim_agents.callbacks import (
    NonFiniteError,
    NonFiniteGuard,
    ReportFn,
    ReportingEvalCallback,
    RimDiagnosticsCallback,
    RolloutCheckpointCallback,
    StopAfterSeconds,
)
from rim_agents.checkpoints import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    load_checkpoint,
    save_atomically,
    set_aside_later_checkpoints,
)
from rim_agents.checks import check_device, check_hyperparams, check_writable_folder, linear_schedule_start
from rim_agents.extractors import MiniGridCNN
from rim_agents.nn import RIM
from rim_agents.policies import resolve_rim_kwargs
from rim_agents.ppo import RimPPO
from rim_agents.progress import Progress
from rim_agents.threads import torch_threads

HYPERPARAMS_FILE = Path(__file__).parent / "hyperparams" / "ppo_rim.yml"
POLICIES = ("rim", "lstm", "ppo")
# policy_kwargs that only a recurrent policy takes; memoryless PPO drops them.
_RECURRENT_POLICY_KWARGS = (
    "rim_kwargs",
    "lstm_hidden_size",
    "n_lstm_layers",
    "shared_lstm",
    "enable_critic_lstm",
    "lstm_kwargs",
    "detach_critic",
)
VEC_ENVS = ("dummy", "subproc")
CONFIG_FILE = "config.yaml"

# Keys a YAML block or a -params override may set: RecurrentPPO's own arguments plus the
# zoo's training keys. Arguments that the training core sets itself are left out.
_SET_BY_CORE = {"self", "policy", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model"}
ALGO_KEYS = frozenset(inspect.signature(RecurrentPPO.__init__).parameters) - _SET_BY_CORE
# RimPPO's own (rim_agents.ppo): which buffer builds the minibatches, and how long their lanes may be.
_RIMPPO_KEYS = ("packed_minibatches", "max_lane_length")
HYPERPARAM_KEYS = ALGO_KEYS | {"policy", "n_timesteps", "n_envs", "env_kwargs", *_RIMPPO_KEYS}
# Hyperparameters that may be a schedule string "lin_<start>" (linear decay to 0, as in the zoo).
_SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")
# policy_kwargs entries given as dotted import paths in YAML.
_CLASS_KWARGS = ("features_extractor_class", "activation_fn", "optimizer_class")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; written to ``config.yaml`` in the run directory.

    :param env: environment id, e.g. ``"MiniGrid-MemoryS7-v0"``
    :param policy: ``"rim"``, ``"lstm"`` (sb3-contrib's LSTM policy of the same total hidden size) or
        ``"ppo"`` (SB3's memoryless PPO with the same features extractor, heads and hyperparameters)
    :param seed: seed of the model and of environment copy 0 (copy i gets ``seed + i``)
    :param n_timesteps: total environment steps of the run (across all parallel environments)
    :param n_envs: parallel training environments
    :param hyperparams: RecurrentPPO arguments and ``policy``, ``policy_kwargs``, ``env_kwargs``
        from the YAML defaults with overrides applied (``n_timesteps`` and ``n_envs`` live above)
    :param log_folder: parent folder of the run directory
    :param vec_env: ``"dummy"`` (one process) or ``"subproc"`` (one process per environment)
    :param eval_freq: evaluate every this many environment steps; 0 disables evaluation
    :param eval_episodes: episodes per evaluation
    :param eval_deterministic: evaluate with the most likely action instead of sampling
    :param save_freq: checkpoint every this many environment steps; 0 keeps only the final model
    :param keep_checkpoints: keep the newest this many checkpoints and delete older ones (the best
        model is a file of its own and always kept); 0 keeps all
    :param device: torch device (``"auto"``, ``"cpu"``, ``"cuda"``...)
    :param max_seconds: stop learning after this much wall time (at a rollout start) even if
        ``n_timesteps`` is not reached; None for no limit
    :param progress_bar: show a progress bar while learning on a terminal; without one (or
        with False) a plain progress line is printed every 30 seconds instead
    :param num_threads: CPU threads torch uses while training (restored afterwards; rl-zoo's
        ``--num-threads``); one is the fastest for the RIM on a CPU
    :param verbose: 0 quiet, 1 print SB3's training table and evaluation results
    """

    env: str
    policy: str = "rim"
    seed: int = 0
    n_timesteps: int = 100_000
    n_envs: int = 8
    hyperparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    log_folder: str = "logs"
    vec_env: str = "dummy"
    eval_freq: int = 10_000
    eval_episodes: int = 20
    eval_deterministic: bool = False
    save_freq: int = 50_000
    keep_checkpoints: int = 5
    device: str = "auto"
    max_seconds: float | None = None
    progress_bar: bool = True
    num_threads: int = 1
    verbose: int = 0

    def __post_init__(self) -> None:
        check_env_id(self.env)  # unknown ids fail here, listing close matches
        if self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r} is not supported; use one of {POLICIES}")
        if self.vec_env not in VEC_ENVS:
            raise ValueError(f"vec_env={self.vec_env!r} is not supported; use one of {VEC_ENVS}")
        for name in ("n_timesteps", "n_envs", "eval_episodes", "num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("eval_freq", "save_freq"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative number of steps (0 disables)")
        keep = self.keep_checkpoints
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(
                f"keep_checkpoints={keep!r} must be a non-negative number of checkpoints (0 keeps all)"
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds={self.max_seconds!r} must be a positive number of seconds or None")
        _check_keys(self.hyperparams, "hyperparams")
        check_hyperparams(self.hyperparams)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain YAML-serialisable data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a configuration written by :meth:`to_dict`; unknown fields are a ValueError.

        :param data: mapping of field names to values
        """
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown configuration fields {unknown}; known: {sorted(fields)}")
        return cls(**data)


def _check_keys(hyperparams: dict[str, Any], where: str) -> None:
    unknown = sorted(set(hyperparams) - HYPERPARAM_KEYS)
    if unknown:
        hints = {key: difflib.get_close_matches(key, HYPERPARAM_KEYS, n=3) for key in unknown}
        detail = "; ".join(f"{key!r} (close: {', '.join(close) or 'none'})" for key, close in hints.items())
        raise ValueError(f"unknown hyperparameter in {where}: {detail}. Allowed: {sorted(HYPERPARAM_KEYS)}")


def load_hyperparams(env_id: str, path: str | Path = HYPERPARAMS_FILE) -> dict[str, Any]:
    """Return the YAML defaults for ``env_id``, or its family's block when the id has none.

    :param env_id: environment id
    :param path: YAML file in rl-baselines3-zoo format (keys: env ids and family names)
    """
    with open(path) as file:
        table = yaml.safe_load(file)
    family = env_family(env_id)
    if env_id in table:
        block = table[env_id]
    elif family in table:
        block = table[family]
    else:
        raise ValueError(f"{path} has no block for {env_id!r} nor for its family {family!r}")
    hyperparams = dict(block)
    _check_keys(hyperparams, f"{path} [{env_id}]")
    return hyperparams


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key:value`` strings (rl-zoo's ``-params``); values are Python literals, else strings.

    ``policy_kwargs.rim_kwargs.top_k:3`` sets a nested key. Keys are checked by :func:`make_config`.

    :param items: e.g. ``["n_steps:64", "learning_rate:'lin_3e-4'", "policy_kwargs.net_arch:[32]"]``
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition(":")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key:value (e.g. n_steps:64)")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # bare words such as lin_3e-4 or CnnRimPolicy
        overrides[key] = value
    return overrides


def _apply_overrides(hyperparams: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    result = {key: (dict(value) if isinstance(value, dict) else value) for key, value in hyperparams.items()}
    for dotted, value in overrides.items():
        top, *path = dotted.split(".")
        _check_keys({top: value}, f"override {dotted!r}")
        if not path:
            result[top] = value
            continue
        node = result.setdefault(top, {})
        for part in path[:-1]:
            if not isinstance(node, dict):
                raise ValueError(f"override {dotted!r}: {part!r} is inside a value that is not a mapping")
            node[part] = dict(node.get(part) or {})
            node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: the parent of {path[-1]!r} is not a mapping")
        node[path[-1]] = value
    return result


def make_config(
    env: str,
    policy: str = "rim",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    hyperparams_file: str | Path = HYPERPARAMS_FILE,
    n_timesteps: int | None = None,
    n_envs: int | None = None,
    **options: Any,
) -> TrainConfig:
    """Resolve a run's configuration: YAML defaults for ``env``, then ``overrides``, then explicit arguments.

    :param env: environment id
    :param policy: ``"rim"`` or ``"lstm"``
    :param seed: random seed
    :param overrides: hyperparameter overrides, dotted keys for nested values (see :func:`parse_overrides`)
    :param hyperparams_file: YAML defaults
    :param n_timesteps: total steps; None takes the YAML's ``n_timesteps``
    :param n_envs: parallel environments; None takes the YAML's ``n_envs``
    :param options: other :class:`TrainConfig` fields (``log_folder``, ``eval_freq``, ...)
    """
    hyperparams = _apply_overrides(load_hyperparams(env, hyperparams_file), overrides or {})
    yaml_steps = hyperparams.pop("n_timesteps", 100_000)
    yaml_envs = hyperparams.pop("n_envs", 8)
    return TrainConfig(
        env=env,
        policy=policy,
        seed=seed,
        n_timesteps=int(yaml_steps if n_timesteps is None else n_timesteps),
        n_envs=int(yaml_envs if n_envs is None else n_envs),
        hyperparams=hyperparams,
        **options,
    )


def _import_dotted(path: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r} is not a dotted import path such as torch.nn.ReLU")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {path!r}: {error}") from error


def _schedule(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return LinearSchedule(linear_schedule_start(key, value), 0.0, 1.0)
    return value


def rim_hidden_size(rim_kwargs: dict[str, Any] | None) -> int:
    """Hidden size ``num_units * unit_size`` of a RIM built with ``rim_kwargs`` (RIM defaults filled in).

    :param rim_kwargs: RIM keyword arguments, as in ``policy_kwargs["rim_kwargs"]``
    """
    defaults = inspect.signature(RIM).parameters
    kwargs = rim_kwargs or {}
    num_units = kwargs.get("num_units", defaults["num_units"].default)
    unit_size = kwargs.get("unit_size", defaults["unit_size"].default)
    return int(num_units) * int(unit_size)


def _check_pixels_reach_a_pixel_network(config: TrainConfig, policy_kwargs: dict[str, Any]) -> None:
    """MiniGrid's ``observation: rgb`` gives 0-255 pixels; the family defaults (MiniGridCNN,
    ``normalize_images: false``) are made for symbolic indices and would train on raw pixels."""
    env_kwargs = config.hyperparams.get("env_kwargs") or {}
    if env_kwargs.get("observation") != "rgb":
        return
    if policy_kwargs.get("features_extractor_class") is MiniGridCNN or not policy_kwargs.get(
        "normalize_images", True
    ):
        raise ValueError(
            "env_kwargs observation='rgb' gives 0-255 pixels, but the policy feeds them unscaled to "
            f"{getattr(policy_kwargs.get('features_extractor_class'), '__name__', 'its extractor')} "
            f"(normalize_images={policy_kwargs.get('normalize_images', True)}), which is made for "
            "symbolic grids. Use a pixel network: -params "
            "policy_kwargs.features_extractor_class:stable_baselines3.common.torch_layers.NatureCNN "
            "policy_kwargs.normalize_images:True "
            "(NatureCNN needs at least 36x36 pixels: env_kwargs.tile_size >= 6), "
            "or keep observation 'symbolic'"
        )


def build_algorithm_kwargs(config: TrainConfig) -> tuple[type[OnPolicyAlgorithm], str, dict[str, Any]]:
    """Turn a configuration into the algorithm class, the policy name and its keyword arguments.

    For ``policy="lstm"`` the RIM policy name becomes the LSTM one (``CnnRimPolicy`` ->
    ``CnnLstmPolicy``), ``rim_kwargs`` is dropped and ``lstm_hidden_size`` is set to the
    RIM's ``num_units * unit_size`` so both have the same total hidden size. For
    ``policy="ppo"`` it becomes SB3's memoryless one (``CnnRimPolicy`` -> ``CnnPolicy``,
    trained by ``PPO``) and the recurrent policy options are dropped: the features extractor,
    ``net_arch`` and every algorithm hyperparameter stay those of the YAML block.

    :param config: a resolved configuration
    :return: (algorithm class, policy alias, keyword arguments except env, seed, device, verbose)
    """
    hyperparams = dict(config.hyperparams)
    hyperparams.pop("env_kwargs", None)
    policy_name = hyperparams.pop("policy", "MlpRimPolicy")
    if not isinstance(policy_name, str) or policy_name not in RimPPO.policy_aliases:
        raise ValueError(
            f"policy={policy_name!r} in hyperparams is not one of {sorted(RimPPO.policy_aliases)}"
        )
    policy_kwargs = dict(hyperparams.pop("policy_kwargs", None) or {})
    for key in _CLASS_KWARGS:
        if isinstance(policy_kwargs.get(key), str):
            policy_kwargs[key] = _import_dotted(policy_kwargs[key])
    _check_pixels_reach_a_pixel_network(config, policy_kwargs)
    algorithm: type[OnPolicyAlgorithm] = RimPPO
    if config.policy != "lstm" and "Rim" not in policy_name:
        raise ValueError(
            f"policy={config.policy!r} needs a RIM policy in hyperparams (the memoryless one is derived "
            f"from it), got policy={policy_name!r}"
        )
    if config.policy == "ppo":
        policy_name = policy_name.replace("Rim", "")
        for key in _RECURRENT_POLICY_KWARGS:
            policy_kwargs.pop(key, None)
        for key in _RIMPPO_KEYS:
            hyperparams.pop(key, None)  # no sequences to pack
        algorithm = PPO
    elif config.policy == "lstm":
        policy_name = policy_name.replace("Rim", "Lstm")
        rim_kwargs = policy_kwargs.pop("rim_kwargs", None)
        policy_kwargs.setdefault("lstm_hidden_size", rim_hidden_size(rim_kwargs))
        # sb3-contrib's RecurrentPPO and buffer, unless the LSTM is asked to train on packed lanes.
        algorithm = RimPPO if hyperparams.get("packed_minibatches") else RecurrentPPO
        if algorithm is RecurrentPPO:
            hyperparams.pop("packed_minibatches", None)
            if hyperparams.pop("max_lane_length", None) is not None:
                warnings.warn(
                    "max_lane_length is ignored for the LSTM policy: sb3-contrib's buffer cuts its "
                    "sequences only at episode starts (set packed_minibatches: true to give it lanes)",
                    stacklevel=2,
                )
    _check_policy_kwargs(algorithm.policy_aliases[policy_name], policy_kwargs)
    for key in _SCHEDULE_KEYS:
        if key in hyperparams:
            hyperparams[key] = _schedule(key, hyperparams[key])
    hyperparams["policy_kwargs"] = policy_kwargs
    return algorithm, policy_name, hyperparams


def _check_policy_kwargs(policy_class: type, policy_kwargs: dict[str, Any]) -> None:
    """Reject a ``policy_kwargs`` key the policy does not take, and a bad ``rim_kwargs`` key, now:
    a sweep creates its grid with this, so a typo fails there instead of in every trial."""
    parameters = inspect.signature(policy_class).parameters
    positional = ("observation_space", "action_space", "lr_schedule")
    known = [name for name in parameters if name not in positional]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [] if takes_any else sorted(set(policy_kwargs) - set(known))
    if unknown:
        hints = {key: difflib.get_close_matches(key, known, n=3) for key in unknown}
        raise ValueError(
            f"policy_kwargs {unknown} are not options of {policy_class.__name__} (closest: {hints}); "
            f"it takes {sorted(known)}"
        )
    if "rim_kwargs" in parameters:
        resolve_rim_kwargs(policy_kwargs.get("rim_kwargs"), policy_kwargs.get("lstm_kwargs"), None)


def make_vec_env(
    config: TrainConfig, n_envs: int, seed: int, render_mode: str | None = None, evaluation: bool = False
) -> VecEnv:
    """Build the vectorised environment of a run (``seed + i`` for copy ``i``).

    :param config: the run's configuration (env id, ``env_kwargs``, vec_env kind)
    :param n_envs: number of copies
    :param seed: base seed
    :param render_mode: passed to the environment factory (``"rgb_array"`` for video)
    :param evaluation: build evaluation copies (see :func:`envs.make_env`: Atari plays whole
        games with unclipped rewards there)
    """
    env_kwargs = dict(config.hyperparams.get("env_kwargs") or {})
    if render_mode is not None:
        env_kwargs["render_mode"] = render_mode
    thunks = [
        make_env(config.env, seed=seed, idx=idx, evaluation=evaluation, **env_kwargs) for idx in range(n_envs)
    ]
    vec_env: VecEnv = (
        SubprocVecEnv(thunks) if config.vec_env == "subproc" and n_envs > 1 else DummyVecEnv(thunks)
    )
    space = vec_env.observation_space
    # SB3 would transpose a channels-last image for the model only; doing it here keeps the
    # training and evaluation environments of the same type.
    if isinstance(space, spaces.Box) and is_image_space(space) and not is_image_space_channels_first(space):
        vec_env = VecTransposeImage(vec_env)
    return vec_env


def run_folder_env(env_id: str) -> str:
    """``env_id`` as one folder-name part: a namespace's ``/`` becomes ``+``.

    ``MinAtar/Breakout-v1`` -> ``MinAtar+Breakout-v1``, ``ALE/Pong-v5`` -> ``ALE+Pong-v5``; ids
    without a namespace stay as they are. Gymnasium ids never contain ``+`` (namespaces and
    names are letters, digits, ``_``, ``-``, ``:`` and ``.``), so no two ids share a folder name.
    Runs made before this rule put such ids two levels deep (``MinAtar/Breakout-v1__...``);
    those folders are still read: their paths are given or stored whole.

    :param env_id: environment id
    """
    return env_id.replace("/", "+")


def new_run_dir(config: TrainConfig) -> Path:
    """Create ``{log_folder}/{env}__{policy}__{seed}__{unix time}`` (CleanRL's run naming), one folder
    deep for every id (``env`` is :func:`run_folder_env` of the id).

    :param config: the run's configuration
    """
    stamp = int(time.time())
    env = run_folder_env(config.env)
    while True:
        run_dir = Path(config.log_folder) / f"{env}__{config.policy}__{config.seed}__{stamp}"
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            stamp += 1  # another run of the same env/policy/seed started within the same second


def find_run(path: str | Path) -> tuple[Path, Path]:
    """Locate the run directory and the checkpoint to resume from.

    :param path: a checkpoint ``.zip`` inside a run directory, or a run directory (its latest checkpoint)
    :return: (run directory, checkpoint)
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"resume path {str(path)!r} does not exist")
    if path.is_dir():
        run_dir, checkpoint = path, latest_checkpoint(path)
        if checkpoint is None:
            raise ValueError(
                f"run directory {str(path)!r} has no checkpoints in {CHECKPOINT_DIR}/ to resume from"
            )
    else:
        if path.suffix != ".zip":
            raise ValueError(f"resume path {str(path)!r} is neither a run directory nor a checkpoint .zip")
        checkpoint = path
        run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(
            f"{str(checkpoint)!r} is not inside a run directory: no {CONFIG_FILE} in {str(run_dir)!r}"
        )
    return run_dir, checkpoint


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """Read the ``config.yaml`` of a run directory.

    :param run_dir: a run directory written by :func:`train`
    """
    with open(Path(run_dir) / CONFIG_FILE) as file:
        return TrainConfig.from_dict(yaml.safe_load(file))


def _save_config(config: TrainConfig, run_dir: Path) -> None:
    with open(run_dir / CONFIG_FILE, "w") as file:
        yaml.safe_dump(config.to_dict(), file, sort_keys=False)


def _load_checkpoint(
    config: TrainConfig, algorithm: type[OnPolicyAlgorithm], policy_name: str, checkpoint: Path, env: VecEnv
) -> OnPolicyAlgorithm:
    expected = algorithm.policy_aliases[policy_name]
    model = load_checkpoint(checkpoint, algorithm, expected, env, config.device, config.env, config.policy)
    # SB3's load reseeds everything with the run's seed, which would replay step 0's levels and
    # action noise at every resume; a seed drawn from (seed, steps) continues on fresh ones.
    model.seed = resume_seed(config.seed, model.num_timesteps)
    model.set_random_seed(model.seed)
    return model


def resume_seed(seed: int, num_timesteps: int) -> int:
    """The seed a run resumed at ``num_timesteps`` continues with: the same for every resume
    from the same checkpoint, different from ``seed`` and from every other step's.

    :param seed: the run's seed
    :param num_timesteps: steps of the checkpoint it resumes from
    """
    if num_timesteps == 0:
        return seed
    return int(np.random.SeedSequence([seed, num_timesteps]).generate_state(1)[0]) % 2**31


def _log_hyperparameters(model: OnPolicyAlgorithm, config: TrainConfig) -> None:
    rows = "\n".join(f"|{key}|{value}|" for key, value in sorted(_flatten(config.to_dict()).items()))
    for output in model.logger.output_formats:
        if isinstance(output, TensorBoardOutputFormat):
            output.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
            output.writer.flush()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_run(
    config: TrainConfig, run_dir: str | Path | None = None
) -> tuple[type[OnPolicyAlgorithm], str, dict[str, Any]]:
    """Refuse what :func:`train` cannot run, before any environment, model or run directory
    exists: a device this machine lacks, a log folder that cannot be written, options the
    algorithm or the policy would reject.

    :param config: the run's configuration
    :param run_dir: the run directory to continue, or None for a new one under ``config.log_folder``
    :return: :func:`build_algorithm_kwargs` of ``config``
    """
    check_device(config.device)
    check_writable_folder(config.log_folder if run_dir is None else run_dir, "log folder (-f)")
    return build_algorithm_kwargs(config)


def resume_command(env_id: str, checkpoint: str | Path) -> str:
    """The command that continues a run of ``env_id`` from ``checkpoint``: its family's training script.

    :param env_id: the run's environment
    :param checkpoint: a checkpoint ``.zip`` or run directory
    """
    return f"python scripts/train_{env_family(env_id)}.py --resume {checkpoint}"


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    report: ReportFn | None = None,
    on_run_dir: Callable[[Path], None] | None = None,
    callbacks: list[BaseCallback] | None = None,
) -> Path:
    """Train (or continue training) an agent (PPO for ``policy="ppo"``) and return its run directory.

    :param config: the run's configuration
    :param run_dir: None creates a new run directory; an existing one continues from ``checkpoint``
        or, when None, from its latest checkpoint (a fresh start when it has none; refused when it
        holds a final model, which the fresh start would overwrite)
    :param checkpoint: a checkpoint to continue from (its run directory is used when ``run_dir`` is None)
    :param report: called after each evaluation as ``report(num_timesteps, mean_return, success_rate)``;
        returning False stops training early (a sweep's pruning; an exception it raises propagates)
    :param on_run_dir: called with the run directory before training starts (e.g. to print it)
    :param callbacks: more SB3 callbacks, run after the training core's own
    :return: the run directory, holding ``final_model.zip``
    """
    with torch_threads(config.num_threads):
        return _train(config, run_dir, checkpoint, report, on_run_dir, callbacks)


def _train(
    config: TrainConfig,
    run_dir: str | Path | None,
    checkpoint: str | Path | None,
    report: ReportFn | None,
    on_run_dir: Callable[[Path], None] | None,
    callbacks: list[BaseCallback] | None,
) -> Path:
    """:func:`train` with the thread count already set."""
    if checkpoint is not None and run_dir is None:
        run_dir, checkpoint = find_run(checkpoint)
    if run_dir is not None and checkpoint is None:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None and (Path(run_dir) / "final_model.zip").exists():
            raise ValueError(
                f"{str(run_dir)!r} holds a finished run with no checkpoint to continue from: evaluate it "
                f"(python scripts/evaluate.py --model {run_dir}) or start a new run (run_dir=None) "
                "instead of overwriting it"
            )
    algorithm, policy_name, kwargs = check_run(config, run_dir)

    env = make_vec_env(config, config.n_envs, config.seed)
    # Evaluation copies get seeds of their own (seed + 10000 + i), apart from the training copies.
    eval_env = (
        make_vec_env(config, min(config.n_envs, 4), config.seed + 10_000, evaluation=True)
        if config.eval_freq
        else None
    )
    try:
        if checkpoint is None:
            model = algorithm(
                policy_name, env, seed=config.seed, device=config.device, verbose=config.verbose, **kwargs
            )
        else:
            model = _load_checkpoint(config, algorithm, policy_name, Path(checkpoint), env)
        # Only now that the model is built or loaded: a bad config must not leave a run behind
        # nor overwrite the config of the run it failed to resume.
        run_dir = new_run_dir(config) if run_dir is None else Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _save_config(config, run_dir)
        if on_run_dir is not None:
            on_run_dir(run_dir)
        if checkpoint is not None:
            # TensorBoard drops what a run logged past this step before it was resumed from here
            # (the curves show one trajectory); the checkpoint's own step was logged before it was
            # saved and stays.
            SummaryWriter(str(run_dir / "tb"), purge_step=model.num_timesteps + 1).close()
            set_aside_later_checkpoints(run_dir / CHECKPOINT_DIR, model.num_timesteps)
        formats = ["tensorboard", "stdout"] if config.verbose else ["tensorboard"]
        model.set_logger(configure(str(run_dir / "tb"), formats))
        if checkpoint is None:
            _log_hyperparameters(model, config)

        checkpointer = RolloutCheckpointCallback(
            run_dir / CHECKPOINT_DIR, config.save_freq, keep=config.keep_checkpoints
        )
        # First: a model with NaN or infinite values must stop training before anything saves it.
        guard = NonFiniteGuard(lambda: latest_checkpoint(run_dir))
        chain: list[BaseCallback] = [guard]
        if isinstance(getattr(model.policy, "lstm_actor", None), RIM):
            # Before evaluation, which runs the same RIM on other envs and overwrites last_active.
            chain.append(RimDiagnosticsCallback())
        chain.append(checkpointer)
        evaluation = None
        if eval_env is not None:
            evaluation = ReportingEvalCallback(
                eval_env,
                run_dir=run_dir,
                n_eval_episodes=config.eval_episodes,
                eval_freq=max(config.eval_freq // config.n_envs, 1),
                deterministic=config.eval_deterministic,
                report=report,
                verbose=config.verbose,
            )
            chain.append(evaluation)
        if config.max_seconds is not None:
            chain.append(StopAfterSeconds(config.max_seconds))
        chain.append(Progress(config.n_timesteps, bar=config.progress_bar, evaluation=evaluation))
        chain.extend(callbacks or [])
        remaining = config.n_timesteps - model.num_timesteps
        if remaining > 0:
            try:
                model.learn(
                    remaining,
                    callback=CallbackList(chain),
                    reset_num_timesteps=False,
                )
            except KeyboardInterrupt:
                path = checkpointer.save_interrupted()
                if path is None:
                    print("\ninterrupted before training started: nothing new to save", flush=True)
                else:
                    print(
                        f"\ninterrupted: saved {path}\nresume with: {resume_command(config.env, path)}",
                        flush=True,
                    )
                raise
            except NonFiniteError:
                raise
            except (ValueError, RuntimeError) as error:
                explained = guard.explain(error)
                if explained is None:
                    raise
                raise explained from error
        save_atomically(model, run_dir / "final_model.zip")
    finally:
        for vec_env in (env, eval_env):
            if vec_env is None:
                continue
            # Subprocess workers exit on the same Ctrl-C; their pipes are gone and nothing is left to close.
            with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
                vec_env.close()
    return run_dir
