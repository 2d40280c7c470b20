"""Confidence intervals for the means the studies, the sweep report and the main job print,
and the exact test for counts of seeds that did something."""

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


def fisher_exact_p(hits_a: int, total_a: int, hits_b: int, total_b: int) -> float:
    """Two-sided Fisher exact test of two counts, e.g. seeds that learned a task out of 5.

    :return: the p-value of "both come from the same rate" for ``hits_a`` of ``total_a``
        against ``hits_b`` of ``total_b``
    """
    for hits, total in ((hits_a, total_a), (hits_b, total_b)):
        if not 0 <= hits <= total:
            raise ValueError(f"a count must lie in [0, total], got {hits} of {total}")
    from scipy import stats

    table = [[hits_a, total_a - hits_a], [hits_b, total_b - hits_b]]
    return float(stats.fisher_exact(table, alternative="two-sided").pvalue)
