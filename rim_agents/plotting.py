"""Pictures of which RIM units were active when, for TensorBoard and evaluation reports.

Symbols:
    T - time steps of an episode    Y - RIM layers    K - units per layer
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch


def plot_unit_activity(active: np.ndarray, rewards: np.ndarray, title: str = "") -> Figure:
    """Draw a units-by-steps map of activity above the rewards of the same steps.

    Uses ``matplotlib.figure.Figure`` directly (no pyplot), so it needs no display and
    keeps no global figure state.

    :param active: ``(T, Y, K)`` booleans, unit k of layer y active at step t
    :param rewards: ``(T,)`` reward received after each step
    :param title: figure title
    :return: the figure (save with ``fig.savefig(path)``)
    """
    if active.ndim != 3 or rewards.shape != (active.shape[0],):
        raise ValueError(
            f"expected active (T, Y, K) and rewards (T,), got {active.shape} and {rewards.shape}"
        )
    n_steps, n_layers, n_units = active.shape
    # (T, Y, K) -> (Y*K, T): one row per unit, layer by layer, time along x.
    rows = active.transpose(1, 2, 0).reshape(n_layers * n_units, n_steps)
    figure = Figure(figsize=(max(6.0, min(0.06 * n_steps + 2.0, 20.0)), 1.2 + 0.35 * rows.shape[0] + 1.2))
    grid = figure.add_gridspec(2, 1, height_ratios=[max(rows.shape[0], 2), 2], hspace=0.15)
    top = figure.add_subplot(grid[0])
    top.imshow(rows, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1)
    labels = [f"L{y} u{k}" if n_layers > 1 else f"unit {k}" for y in range(n_layers) for k in range(n_units)]
    top.set_yticks(range(len(labels)), labels)
    top.set_ylabel("RIM unit")
    top.tick_params(labelbottom=False)
    top.set_title(title or "active units per step")
    key = [
        Patch(facecolor="black", label="active"),
        Patch(facecolor="white", edgecolor="grey", label="inactive"),
    ]
    top.legend(handles=key, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    bottom = figure.add_subplot(grid[1], sharex=top)
    bottom.bar(np.arange(n_steps), rewards, width=1.0, color="tab:green")
    bottom.set_xlim(-0.5, n_steps - 0.5)
    bottom.set_xlabel("step of the episode")
    bottom.set_ylabel("reward after the step")
    return figure
