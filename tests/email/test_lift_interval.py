"""The lift's 95% interval in `nudge report` (email_jobs.report.lift_interval): Newcombe's hybrid
score interval, checked against published and independently computed values, and at the
boundaries where the normal approximation it replaced went past 100 points or had no width."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from email_jobs.report import lift_interval


@pytest.mark.parametrize(
    ("treated", "held", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873-890, example (a), method 10.
        ((56, 70), (48, 80), 0.0524, 0.3339),
        # Computed with scipy 1.17: Wilson bounds from binomtest(k, n).proportion_ci(0.95,
        # method="wilson"), combined as low = d - sqrt((p1-l1)^2 + (u2-p2)^2), high = d +
        # sqrt((u1-p1)^2 + (p2-l2)^2).
        ((7, 10), (2, 10), 0.06647631448630476, 0.7397586340406175),
        ((3, 4), (1, 2), -0.3552501109137244, 0.7040809521072406),
        ((5, 56), (0, 29), -0.03813714790353688, 0.1925600138551116),
        ((10, 10), (0, 20), 0.6790860371419147, 1.0),
    ],
)
def test_interval_matches_independent_values(
    treated: tuple[int, int], held: tuple[int, int], low: float, high: float
) -> None:
    (c_t, n_t), (c_h, n_h) = treated, held
    lift = lift_interval(n_t, c_t, n_h, c_h)
    tolerance = 5e-5 if treated == (56, 70) else 1e-12  # the paper prints 4 decimals
    assert lift.lift == pytest.approx(c_t / n_t - c_h / n_h)
    assert lift.ci_low == pytest.approx(low, abs=tolerance)
    assert lift.ci_high == pytest.approx(high, abs=tolerance)


def test_small_groups_stay_within_plus_minus_100_points() -> None:
    # The demo's 3/4 against 0/3 printed "lift +75.0 pts, 95% CI +32.6 pts to +117.4 pts".
    lift = lift_interval(4, 3, 3, 0)
    assert lift.lift == 0.75
    assert -1 <= lift.ci_low < 0.75 < lift.ci_high <= 1
    assert lift.ci_high == pytest.approx(0.9544127391902995)  # scipy, as above


@pytest.mark.parametrize("rate", [0, 1])
def test_equal_extreme_rates_keep_a_width(rate: int) -> None:
    # 0/5 against 0/5 (or 5/5 against 5/5) was "+0 to +0": certain of a lift of exactly 0.
    lift = lift_interval(5, 5 * rate, 5, 5 * rate)
    assert lift.lift == 0
    assert lift.ci_low == pytest.approx(-0.43448246478317476)  # scipy, as above
    assert lift.ci_high == pytest.approx(0.43448246478317476)
    assert lift.significant is False


def test_an_empty_group_has_no_lift() -> None:
    lift = lift_interval(4, 3, 0, 0)
    assert (lift.holdout, lift.lift, lift.ci_low, lift.ci_high, lift.significant) == (
        None, None, None, None, None,
    )  # fmt: skip


@given(
    st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
    st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
)
def test_interval_is_within_bounds_and_contains_the_lift(
    treated: tuple[int, int], held: tuple[int, int]
) -> None:
    (n_t, c_t), (n_h, c_h) = treated, held
    lift = lift_interval(n_t, c_t, n_h, c_h)
    assert -1 <= lift.ci_low <= lift.lift <= lift.ci_high <= 1  # the lift itself at +-1
    assert lift.ci_low < lift.ci_high
    assert lift.significant == (lift.ci_low > 0 or lift.ci_high < 0)
