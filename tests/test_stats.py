"""rim_agents.stats: the t-interval every report prints."""

import math

import pytest

from rim_agents.stats import fisher_exact_p, t_half_width


def test_t_half_width_is_the_95_percent_t_quantile_times_the_standard_error() -> None:
    # 3 values with sample standard deviation 1: t(0.975, 2) = 4.3027 standard errors of 1/sqrt(3).
    assert t_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.30265 / math.sqrt(3), rel=1e-5)
    assert t_half_width([0.5, 0.5]) == 0.0


def test_t_half_width_of_a_single_value_is_none() -> None:
    assert t_half_width([0.7]) is None and t_half_width([]) is None


def test_fisher_exact_p_matches_the_hypergeometric_sums() -> None:
    # 5 of 5 against 1 of 5: the tables as or more extreme are (5,1) and (1,5), each
    # C(5,5) C(5,1) / C(10,6) = 5/210.
    assert fisher_exact_p(5, 5, 1, 5) == pytest.approx(10 / 210)
    assert fisher_exact_p(3, 5, 3, 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="count must lie"):
        fisher_exact_p(6, 5, 1, 5)
