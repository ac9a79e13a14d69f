"""The one backoff formula (anycore._core._backoff) every retry loop uses."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from anycore._core._backoff import Backoff, backoff_delay


def test_plain_doubling_without_jitter_up_to_the_cap() -> None:
    b = Backoff(0.01, 0.1, jitter=0)
    assert [round(b.next(), 6) for _ in range(6)] == [0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    assert b.attempt == 6
    assert b.last == 0.1
    b.reset()
    assert (b.attempt, b.last) == (0, 0.0)
    assert b.next() == 0.01


@given(
    attempt=st.integers(min_value=-3, max_value=10_000),
    initial=st.floats(min_value=0, max_value=1e6),
    maximum=st.floats(min_value=0, max_value=1e6),
    jitter=st.floats(min_value=0, max_value=0.99),
)
def test_the_delay_stays_within_the_jittered_cap(
    attempt: int, initial: float, maximum: float, jitter: float
) -> None:
    base = min(maximum, initial * 2.0 ** min(max(attempt - 1, 0), 64))
    delay = backoff_delay(attempt, initial, maximum, jitter)
    assert base * (1 - jitter) * (1 - 1e-12) <= delay <= base * (1 + jitter) * (1 + 1e-12)


def test_jitter_spreads_the_delays() -> None:
    delays = {backoff_delay(3, 0.1, 10.0) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) >= 0.3
    assert max(delays) <= 0.5


@pytest.mark.parametrize(
    "args", [(-1.0, 1.0, 0.1), (1.0, -1.0, 0.1), (1.0, 1.0, 1.0), (1.0, 1.0, -0.1)]
)
def test_bad_parameters_are_refused(args: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(*args)


def test_repr_shows_where_it_is() -> None:
    b = Backoff(0.5, 30)
    b.next()
    assert repr(b) == "Backoff(initial=0.5, maximum=30, jitter=0.25, attempt=1)"
