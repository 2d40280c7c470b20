"""rim_agents.stats: the t-interval every report prints."""

import math

import pytest

from rim_agents.stats import t_half_width


def test_t_half_width_is_the_95_percent_t_quantile_times_the_standard_error() -> None:
    # 3 values with sample standard deviation 1: t(0.975, 2) = 4.3027 standard errors of 1/sqrt(3).
    assert t_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.30265 / math.sqrt(3), rel=1e-5)
    assert t_half_width([0.5, 0.5]) == 0.0


def test_t_half_width_of_a_single_value_is_none() -> None:
    assert t_half_width([0.7]) is None and t_half_width([]) is None
