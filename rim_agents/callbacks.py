"""Callbacks of the training core: RIM diagnostics for TensorBoard, checkpoints, evaluation with reporting.

Symbols:
    E - training environments    Y - RIM layers    K - units per layer
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.logger import Figure as LoggedFigure
from stable_baselines3.common.vec_env import VecEnv

from rim_agents.checkpoints import (
    checkpoint_path,
    prune_checkpoints,
    replace_durably,
    save_atomically,
    write_text_atomically,
)
from rim_agents.nn import RIM
from rim_agents.plotting import plot_unit_activity

# report(num_timesteps, mean_return, success_rate or None) -> False to stop training.
ReportFn = Callable[[int, float, float | None], bool | None]
_IMAGE_ONLY = ("stdout", "log", "json", "csv")


def usage_entropy(counts: np.ndarray, top_k: int) -> float:
    """Entropy of the units' share of activations, scaled to [0, 1] and averaged over layers.

    With exactly ``top_k`` of ``K`` units active per step, the entropy of the shares lies
    between ``log top_k`` (the same units every step) and ``log K`` (all units equally);
    it is mapped linearly onto [0, 1].

    :param counts: ``(Y, K)`` activations per layer and unit; needs ``K > top_k``
    :param top_k: active units per step
    """
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    entropy = -(share * np.log(np.where(share > 0, share, 1.0))).sum(axis=1)  # (Y,)
    low, high = np.log(top_k), np.log(counts.shape[1])
    return float(np.clip((entropy.mean() - low) / (high - low), 0.0, 1.0))


class RimDiagnosticsCallback(BaseCallback):
    """Log how a RIM policy uses its units, from the masks its actor recorded during rollouts.

    Reads ``model.policy.lstm_actor.last_active`` (``(1, Y, E, K)`` during rollouts) at
    every step, right after the rollout's forward pass: no extra forward passes. Logged per
    rollout, under ``rim/``:

    - ``activation_freq/unit_<k>`` (``layer<y>_unit<k>`` with several layers): fraction of
      steps unit k was active (the values of a layer sum to ``top_k``);
    - ``active_set_change_rate``: fraction of consecutive steps within an episode at which
      the active set changed (in any layer);
    - ``unit_usage_entropy``: how evenly the units share the activations, from 0 (always
      the same ``top_k`` units) to 1 (all units equally), averaged over layers (see
      :func:`usage_entropy`; not logged for a dense RIM, ``top_k == K``);
    - ``state_abs_max/h`` and ``state_abs_max/c``: the largest abs(h) and abs(c) of the
      actor's and critic's states over the rollout, to show drift before it bites (``c``
      only for LSTM units; a GRU's is zero);
    - ``unit_activity`` (image, at most every ``heatmap_freq`` steps): units by steps over the
      last finished episode of environment 0, with its rewards.

    Must come before any evaluation callback in a ``CallbackList``: evaluation runs the same
    actor on other environments and overwrites ``last_active``.

    :param heatmap_freq: environment steps between two heatmaps
    :param verbose: verbosity level
    """

    def __init__(self, heatmap_freq: int = 50_000, verbose: int = 0) -> None:
        super().__init__(verbose)
        if heatmap_freq < 1:
            raise ValueError(f"heatmap_freq={heatmap_freq} must be a positive number of steps")
        self.heatmap_freq = heatmap_freq

    def _init_callback(self) -> None:
        rim = self.model.policy.lstm_actor
        if not isinstance(rim, RIM):
            raise ValueError(
                f"RimDiagnosticsCallback needs a RIM policy; lstm_actor is a {type(rim).__name__}"
            )
        self._rim = rim
        self._shape = (rim.num_layers, rim.num_units)
        self._reset_counts()
        self._previous: np.ndarray | None = None  # (Y, E, K) masks of the previous step
        self._episode: list[np.ndarray] = []  # env 0's (Y, K) masks in the running episode
        self._episode_rewards: list[float] = []
        self._last_episode: tuple[np.ndarray, np.ndarray] | None = None
        self._last_heatmap = -self.heatmap_freq

    def _reset_counts(self) -> None:
        self._counts = np.zeros(self._shape)
        self._state_max: dict[str, th.Tensor] = {}
        self._samples = 0
        self._changes = 0
        self._comparisons = 0

    def _on_step(self) -> bool:
        active = self._rim.last_active
        n_envs = self.training_env.num_envs
        if active is None or active.shape[0] != 1 or active.shape[2] != n_envs:
            return True  # not a rollout step's forward pass
        self._track_state_max(self.locals["lstm_states"])
        masks = active[0].cpu().numpy()  # (Y, E, K)
        self._counts += masks.sum(axis=1)
        self._samples += n_envs
        starts = (
            self.locals["episode_starts"].cpu().numpy().astype(bool)
        )  # (E,): state reset before this step
        if self._previous is not None:
            changed = (masks != self._previous).any(axis=(0, 2))  # (E,)
            self._changes += int(changed[~starts].sum())
            self._comparisons += int((~starts).sum())
        self._previous = masks
        self._episode.append(masks[:, 0])
        self._episode_rewards.append(float(self.locals["rewards"][0]))
        if self.locals["dones"][0]:
            self._last_episode = (np.stack(self._episode), np.asarray(self._episode_rewards))
            self._episode, self._episode_rewards = [], []
        return True

    def _track_state_max(self, states: RNNStates) -> None:
        # Kept as tensors until the rollout ends: no synchronisation per step.
        names = ("h", "c") if self._rim.cell == "lstm" else ("h",)
        for index, name in enumerate(names):
            step_max = th.maximum(states.pi[index].abs().amax(), states.vf[index].abs().amax())
            running = self._state_max.get(name)
            self._state_max[name] = step_max if running is None else th.maximum(running, step_max)

    def _on_rollout_end(self) -> None:
        if self._samples == 0:
            return
        for name, value in self._state_max.items():
            self.logger.record(f"rim/state_abs_max/{name}", float(value))
        n_layers, n_units = self._shape
        frequency = self._counts / self._samples  # (Y, K)
        for layer in range(n_layers):
            for unit in range(n_units):
                name = f"layer{layer}_unit{unit}" if n_layers > 1 else f"unit{unit}"
                self.logger.record(f"rim/activation_freq/{name}", float(frequency[layer, unit]))
        if self._comparisons:
            self.logger.record("rim/active_set_change_rate", self._changes / self._comparisons)
        if n_units > self._rim.top_k:  # a dense RIM uses every unit at every step: nothing to log
            self.logger.record("rim/unit_usage_entropy", usage_entropy(self._counts, self._rim.top_k))
        self._reset_counts()
        if self._last_episode is not None and self.num_timesteps - self._last_heatmap >= self.heatmap_freq:
            active, rewards = self._last_episode
            title = f"env 0, episode ending before step {self.num_timesteps}: return {rewards.sum():.2f}"
            figure = plot_unit_activity(active, rewards, title)
            self.logger.record("rim/unit_activity", LoggedFigure(figure, close=True), exclude=_IMAGE_ONLY)
            self._last_heatmap = self.num_timesteps


class RolloutCheckpointCallback(BaseCallback):
    """Save ``rl_model_<steps>_steps.zip`` when a rollout starts, i.e. once the previous update is done.

    SB3's CheckpointCallback saves mid-rollout, so its step count includes steps that were
    never trained on; here the count in a checkpoint is always fully trained work. A last
    checkpoint is written when learning ends; when it ended inside a rollout (a callback
    stopped it: the wall-time cap, a pruned sweep trial), the model's step count first goes
    back to the steps trained on, so that neither that checkpoint nor the final model
    claims the unfinished rollout's steps and a resume collects them again.

    :param save_dir: folder for the checkpoints
    :param save_freq: environment steps between checkpoints; 0 saves none (``save_interrupted`` still works)
    :param keep: after each save, delete all but the newest ``keep`` checkpoints; 0 keeps all
    :param verbose: verbosity level
    """

    def __init__(self, save_dir: str | Path, save_freq: int, keep: int = 0, verbose: int = 0) -> None:
        super().__init__(verbose)
        if save_freq < 0:
            raise ValueError(f"save_freq={save_freq} must be a non-negative number of steps")
        if keep < 0:
            raise ValueError(f"keep={keep} must be a non-negative number of checkpoints")
        self.save_dir = Path(save_dir)
        self.save_freq = save_freq
        self.keep = keep
        self._trained_steps: int | None = None  # set when learning starts

    # The model's counter, not the callback's copy: that one is refreshed only in on_step.
    def _init_callback(self) -> None:
        self._trained_steps = self.model.num_timesteps
        self._last_saved = self.model.num_timesteps
        self._rollout_done = True  # no rollout in progress

    def _save(self) -> Path:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = checkpoint_path(self.save_dir, self.model.num_timesteps)
        save_atomically(self.model, path)
        self._last_saved = self.model.num_timesteps
        if self.keep:
            prune_checkpoints(self.save_dir, self.keep)
        return path

    def _on_rollout_start(self) -> None:
        self._trained_steps = self.model.num_timesteps
        self._rollout_done = False
        if self.save_freq and self.model.num_timesteps - self._last_saved >= self.save_freq:
            self._save()

    def _on_rollout_end(self) -> None:
        self._rollout_done = True  # SB3 trains on every rollout that ends

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if not self._rollout_done and self._trained_steps is not None:
            self.model.num_timesteps = self._trained_steps
        if self.save_freq and self.model.num_timesteps != self._last_saved:
            self._save()

    def save_interrupted(self) -> Path | None:
        """Save a checkpoint after an interruption, counting only the steps already trained on.

        Steps of a rollout in progress are dropped from ``num_timesteps``: resuming collects them again.

        :return: the checkpoint, or None when learning had not started (an interrupt during the
            environments' first reset): there is nothing new to save
        """
        if self._trained_steps is None:
            return None
        self.model.num_timesteps = self._trained_steps
        return self._save()


class StopAfterSeconds(BaseCallback):
    """Stop learning at a rollout's first step once ``seconds`` of wall time have passed since it began.

    Checked only when a rollout begins, so the stop wastes at most one vectorised step.

    :param seconds: wall-time budget of this ``learn`` call
    :param verbose: verbosity level
    """

    def __init__(self, seconds: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        if seconds <= 0:
            raise ValueError(f"seconds={seconds} must be positive")
        self.seconds = seconds

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        if self.locals.get("n_steps") != 0 or time.perf_counter() - self._start < self.seconds:
            return True
        print(f"\nwall-time budget of {self.seconds:.0f} s reached at step {self.num_timesteps}", flush=True)
        return False


class ReportingEvalCallback(EvalCallback):
    """SB3's EvalCallback that survives resuming and reports each evaluation.

    Writes ``best_model.zip`` and ``best_model.json`` (steps and mean return of the best
    evaluation) in ``run_dir`` and ``run_dir/eval/evaluations.npz``, each through a
    temporary file, so a kill never leaves a truncated one. When the run resumes, earlier
    evaluations and the best return so far are read back, so the file keeps the whole
    history and a worse model never replaces the best one. Evaluations past the resumed
    checkpoint's step belong to a trajectory that no longer exists: they are dropped, a best
    model among them is set aside as ``abandoned_best_model.zip`` / ``.json``, and later
    evaluations fall on the same step grid as before. Evaluation draws its random actions from
    a fork of torch's generator: the training trajectory is the same whatever ``eval_freq``.

    :param eval_env: evaluation environments
    :param run_dir: the run directory
    :param n_eval_episodes: episodes per evaluation
    :param eval_freq: evaluate every this many callback calls (vectorised steps)
    :param deterministic: act with the most likely action
    :param report: called as ``report(num_timesteps, mean_return, success_rate)`` after each
        evaluation; returning False stops training
    :param verbose: verbosity level
    """

    def __init__(
        self,
        eval_env: VecEnv,
        run_dir: str | Path,
        n_eval_episodes: int,
        eval_freq: int,
        deterministic: bool,
        report: ReportFn | None = None,
        verbose: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.history = self.run_dir / "eval" / "evaluations.npz"
        # SB3 writes the history in place with np.savez (which appends .npz) and the best model
        # in place too: here it writes a temporary file that _on_step moves into place, and no
        # best model (this class saves it).
        super().__init__(
            eval_env,
            n_eval_episodes=n_eval_episodes,
            eval_freq=eval_freq,
            log_path=str(self.run_dir / "eval" / ".evaluations.partial"),
            best_model_save_path=None,
            deterministic=deterministic,
            verbose=verbose,
            warn=False,
        )
        self.report = report

    def _init_callback(self) -> None:
        super()._init_callback()
        steps = self.model.num_timesteps
        if self.history.is_file():
            data = _read_history(self.history)
            keep = data["timesteps"] <= steps
            self.evaluations_timesteps = data["timesteps"][keep].tolist()
            self.evaluations_results = data["results"][keep].tolist()
            self.evaluations_length = data["ep_lengths"][keep].tolist()
            if "successes" in data:
                self.evaluations_successes = data["successes"][keep].tolist()
            if not keep.all():
                self._write_history()
        best = self.run_dir / "best_model.json"
        if best.is_file():
            record = _read_best(best)
            if record["num_timesteps"] <= steps:
                self.best_mean_reward = float(record["mean_return"])
            else:
                for name in ("best_model.zip", "best_model.json"):
                    if (self.run_dir / name).is_file():
                        os.replace(self.run_dir / name, self.run_dir / f"abandoned_{name}")
                means = [float(np.mean(results)) for results in self.evaluations_results]
                self.best_mean_reward = max(means, default=-np.inf)
        # Evaluations fall where they would have without the resume: every eval_freq calls from step 0.
        self.n_calls = steps // self.training_env.num_envs

    def _write_history(self) -> None:
        partial = Path(f"{self.log_path}.npz")
        successes = {"successes": self.evaluations_successes} if self.evaluations_successes else {}
        np.savez(
            partial,
            timesteps=self.evaluations_timesteps,
            results=self.evaluations_results,
            ep_lengths=self.evaluations_length,
            **successes,  # type: ignore[arg-type]
        )
        replace_durably(partial, self.history)

    def _on_step(self) -> bool:
        n_before = len(self.evaluations_timesteps)
        best_before = self.best_mean_reward
        # Evaluation samples actions from torch's global generator; on a fork of it, so that
        # how often a run evaluates does not change what it trains on.
        with th.random.fork_rng(devices=[]):
            continue_training = super()._on_step()
        if len(self.evaluations_timesteps) == n_before:
            return continue_training
        replace_durably(Path(f"{self.log_path}.npz"), self.history)
        if self.best_mean_reward > best_before:
            save_atomically(self.model, self.run_dir / "best_model.zip")
            record: dict[str, Any] = {
                "num_timesteps": self.num_timesteps,
                "mean_return": self.best_mean_reward,
            }
            write_text_atomically(self.run_dir / "best_model.json", json.dumps(record))
        if self.report is not None:
            success = float(np.mean(self._is_success_buffer)) if self._is_success_buffer else None
            if self.report(self.num_timesteps, float(self.last_mean_reward), success) is False:
                continue_training = False
        return continue_training


def _read_history(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"the evaluation history {path} cannot be read ({error}); move it away to resume without "
            "it (the checkpoints do not depend on it)"
        ) from error


def _read_best(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        return {"num_timesteps": int(record["num_timesteps"]), "mean_return": float(record["mean_return"])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} cannot be read ({error}); move it and best_model.zip away to resume without them"
        ) from error


class NonFiniteError(RuntimeError):
    """Training met NaN or infinite values; the message says at which step, in what, and how to resume."""


def find_non_finite(model: BaseAlgorithm) -> list[str]:
    """Name what is NaN or infinite in a model: parameters, gradients, the last rollout states and
    observations, and the training losses of the last update.

    :param model: a (recurrent) PPO model
    :return: descriptions such as ``"parameter policy.lstm_actor.layers.0.weight_hh"``; empty if all is finite
    """
    parameters = list(model.policy.named_parameters())
    found = [f"parameter policy.{name}" for name, p in parameters if not p.isfinite().all()]
    found += [
        f"gradient of policy.{name}"
        for name, p in parameters
        if p.grad is not None and not p.grad.isfinite().all()
    ]
    states = getattr(model, "_last_lstm_states", None)
    if states is not None:
        for side in ("pi", "vf"):
            for name, state in zip(("h", "c"), getattr(states, side), strict=True):
                if not state.isfinite().all():
                    found.append(f"rollout state {side}.{name}")
    observations = getattr(model, "_last_obs", None)
    arrays = observations.values() if isinstance(observations, dict) else [observations]
    if any(isinstance(a, np.ndarray) and a.dtype.kind == "f" and not np.isfinite(a).all() for a in arrays):
        found.append("observation")
    found += [
        f"loss {key}={value}"
        for key, value in model.logger.name_to_value.items()
        if key.startswith("train/") and isinstance(value, float) and not np.isfinite(value)
    ]
    return found


class NonFiniteGuard(BaseCallback):
    """Stop training with a :class:`NonFiniteError` as soon as the model holds NaN or infinite values.

    Checks the parameters, their gradients and the losses after every update (when the next
    rollout starts), and the rollout states at every step. Must come first in a
    ``CallbackList``, before the checkpoint callback, so that a broken model is never saved.
    :meth:`explain` turns an error raised inside ``learn`` (a Categorical distribution
    rejecting NaN logits) into the same :class:`NonFiniteError`.

    :param last_checkpoint: returns the run's latest checkpoint (None if there is none), to
        name it in the error
    :param verbose: verbosity level
    """

    def __init__(self, last_checkpoint: Callable[[], Path | None], verbose: int = 0) -> None:
        super().__init__(verbose)
        self.last_checkpoint = last_checkpoint

    def _init_callback(self) -> None:
        self._in_rollout = False

    def _on_rollout_start(self) -> None:
        found = find_non_finite(self.model)
        if found:
            raise self._error(found, "in the update before it")
        self._in_rollout = True

    def _on_rollout_end(self) -> None:
        self._in_rollout = False

    def _on_step(self) -> bool:
        states: RNNStates | None = self.locals.get("lstm_states")  # None for memoryless PPO
        if states is None:
            return True
        if not th.cat([state.flatten() for side in states for state in side]).isfinite().all():
            raise self._error(["rollout state (h or c)"], "during the rollout")
        return True

    def explain(self, error: Exception) -> NonFiniteError | None:
        """A :class:`NonFiniteError` for an exception raised in ``learn``; None if nothing is
        non-finite, or if ``learn`` failed before training started (no model to check yet)."""
        if getattr(self, "model", None) is None:
            return None
        found = find_non_finite(self.model)
        if isinstance(error, ValueError) and "invalid values" in str(error):
            found.insert(0, "the policy's action distribution (logits)")
        when = "during the rollout" if self._in_rollout else "during the update"
        return self._error(found, when) if found else None

    def _error(self, found: list[str], when: str) -> NonFiniteError:
        checkpoint = self.last_checkpoint()
        if checkpoint is not None:
            resume = (
                f"The last good checkpoint is {checkpoint}; resume from it with "
                f"--resume {checkpoint} (or train(config, checkpoint=...))"
            )
        else:
            resume = "No checkpoint was saved before it"
        return NonFiniteError(
            f"training stopped at step {self.model.num_timesteps}: non-finite values {when} in "
            f"{', '.join(found)}. {resume}. The RIM's comm_read='gated' keeps states bounded; "
            "a lower learning_rate or max_grad_norm may also help."
        )
