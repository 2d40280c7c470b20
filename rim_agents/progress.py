"""Training progress: a bar on a terminal, a plain line at a steady interval otherwise (a log file).

The target is the step the run really ends at: learning stops only at the end of a rollout,
so it is the requested steps rounded up to whole rollouts of ``n_steps * n_envs``.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback


def rollout_target(start: int, total: int, rollout: int) -> int:
    """The step at which learning from ``start`` towards ``total`` stops: whole rollouts only.

    :param start: steps already done
    :param total: steps asked for
    :param rollout: steps per rollout (``n_steps * n_envs``)
    """
    return start + math.ceil(max(total - start, 0) / rollout) * rollout


class Progress(BaseCallback):
    """Show how far training is: a tqdm bar when ``bar`` and stdout is a terminal, else a line
    ``step 12,288/300,032 (4%), 850 steps/s, last evaluation 0.420 at step 10,000`` every
    ``interval`` seconds and when learning ends.

    :param total: the run's ``n_timesteps``
    :param bar: show a bar on a terminal (a line is printed where there is none)
    :param evaluation: the run's evaluation callback, whose latest result the lines show
    :param interval: seconds between lines
    """

    def __init__(
        self, total: int, bar: bool = True, evaluation: EvalCallback | None = None, interval: float = 30.0
    ) -> None:
        super().__init__()
        self.total = total
        self.bar = bar and sys.stdout.isatty()
        self.evaluation = evaluation
        self.interval = interval
        self._pbar: Any = None

    def _on_training_start(self) -> None:
        self._start_steps = self.model.num_timesteps
        rollout = getattr(self.model, "n_steps", 1) * self.model.n_envs
        self.target = rollout_target(self._start_steps, self.total, rollout)
        self._start_time = time.monotonic()
        self._next_line = self._start_time + self.interval
        if self.bar:
            from tqdm import tqdm

            self._pbar = tqdm(total=self.target, initial=self._start_steps, unit="step", unit_scale=True)

    def line(self) -> str:
        """The plain progress line for now."""
        steps = self.model.num_timesteps
        elapsed = max(time.monotonic() - self._start_time, 1e-9)
        text = (
            f"step {steps:,}/{self.target:,} ({100 * steps / self.target:.0f}%), "
            f"{(steps - self._start_steps) / elapsed:.0f} steps/s"
        )
        # The evaluation history, not last_mean_reward: a resumed run reads the history back.
        if self.evaluation is not None and self.evaluation.evaluations_timesteps:
            mean = float(np.mean(self.evaluation.evaluations_results[-1]))
            text += f", last evaluation {mean:.3f} at step {self.evaluation.evaluations_timesteps[-1]:,}"
        return text

    def _on_step(self) -> bool:
        if self._pbar is not None:
            self._pbar.update(self.training_env.num_envs)
        elif time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + self.interval
            print(self.line(), flush=True)
        return True

    def _on_training_end(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
        else:
            print(self.line(), flush=True)
