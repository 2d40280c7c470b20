"""Confidence intervals for the means the studies, the sweep report and the main job print."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def t_half_width(values: Sequence[float], confidence: float = 0.95) -> float | None:
    """Half-width of the t-interval of the mean of ``values`` (None for fewer than two values).

    :param values: one number per seed (or per episode)
    :param confidence: coverage of the interval
    """
    if len(values) < 2:
        return None
    from scipy import stats  # a second to import; only the reports need it

    quantile = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1))
    return quantile * statistics.stdev(values) / math.sqrt(len(values))
