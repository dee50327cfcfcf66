"""Tests for pbq.policy: the load limit and the scheduling decision (pure functions)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbq.policy import Decision, Mode, View, decide, load_limit

# ---------------------------------------------------------------------- load_limit


@pytest.mark.parametrize(
    ("max_load", "wday", "interactive", "work_time", "active_users", "expected"),
    [
        pytest.param(8, 4, 1, True, 0, 4.0, id="work-time-uses-wday"),
        pytest.param(8, 4, 1, False, 0, 8.0, id="off-hours-uses-max"),
        pytest.param(8, 4, 1, True, 1, 3.0, id="work-one-user"),
        pytest.param(8, 4, 1, True, 5, 3.0, id="work-users-capped-by-interactive-1"),
        pytest.param(8, 4, 2, True, 5, 2.0, id="work-users-capped-by-interactive-2"),
        pytest.param(8, 4, 3, True, 2, 2.0, id="fewer-users-than-interactive"),
        pytest.param(8, 4, 0, True, 5, 4.0, id="interactive-0-ignores-users"),
        pytest.param(8, 4, 2, False, 1, 7.0, id="off-hours-users-count-too"),
        pytest.param(8, 1, 4, True, 4, 0.0, id="never-below-0-work"),
        pytest.param(2, 4, 4, False, 4, 0.0, id="never-below-0-off-hours"),
        pytest.param(0, 0, 1, False, 0, 0.0, id="zero-limits"),
        pytest.param(6.5, 2.5, 1, True, 1, 1.5, id="fractional-wday"),
        pytest.param(6.5, 2.5, 1, False, 1, 5.5, id="fractional-max"),
    ],
)
def test_load_limit(max_load, wday, interactive, work_time, active_users, expected) -> None:
    assert load_limit(max_load, wday, interactive, work_time, active_users) == pytest.approx(
        expected
    )


@given(
    max_load=st.floats(0, 256),
    wday=st.floats(0, 256),
    interactive=st.integers(0, 16),
    work_time=st.booleans(),
    users=st.integers(0, 64),
)
def test_load_limit_never_negative_and_monotone_in_users(
    max_load, wday, interactive, work_time, users
):
    lim = load_limit(max_load, wday, interactive, work_time, users)
    assert lim >= 0
    assert lim <= (wday if work_time else max_load)
    # one more active user never raises the limit
    assert load_limit(max_load, wday, interactive, work_time, users + 1) <= lim


# ---------------------------------------------------------------------- decide (table)


def view(**kw) -> View:
    base = {
        "mode": Mode.RUN,
        "limit": 4.0,
        "foreign": 0.0,
        "foreign_recent": 0.0,
        "running": 0,
        "stopped_by_load": 0,
        "stopped_by_user": 0,
        "pending": True,
        "hysteresis": 0.5,
    }
    base.update(kw)
    return View(**base)


MB = 1 << 20

DECIDE_CASES = [
    # mode
    pytest.param(
        view(mode=Mode.PAUSED, running=3, stopped_by_load=1),
        Decision(stop=3),
        id="paused-stops-all",
    ),
    pytest.param(
        view(mode=Mode.PAUSED, running=0, stopped_by_user=2),
        Decision(),
        id="paused-nothing-running",
    ),
    pytest.param(
        view(mode=Mode.PAUSED, running=2, limit=0, foreign=9, foreign_recent=9),
        Decision(stop=2),
        id="paused-over-limit-stops-all",
    ),
    pytest.param(
        view(mode=Mode.TERM, running=3, foreign=9, foreign_recent=9),
        Decision(),
        id="term-never-stops",
    ),
    pytest.param(
        view(mode=Mode.TERM, stopped_by_load=2), Decision(), id="term-never-continues-or-starts"
    ),
    # over the limit: stop the fewest
    pytest.param(
        view(foreign=2.0, foreign_recent=2.0, running=4), Decision(stop=2), id="over-stops-2-of-4"
    ),
    pytest.param(
        view(foreign=1.0, foreign_recent=1.0, running=4), Decision(stop=1), id="over-by-1-stops-1"
    ),
    pytest.param(
        view(foreign=0.6, foreign_recent=0.6, running=4),
        Decision(stop=1),
        id="just-above-band-stops-1",
    ),
    pytest.param(
        view(foreign=1.5, foreign_recent=1.5, running=4),
        Decision(stop=1),
        id="stop-1-lands-on-band-edge",
    ),
    pytest.param(
        view(foreign=1.6, foreign_recent=1.6, running=4),
        Decision(stop=2),
        id="stop-2-when-1-not-enough",
    ),
    pytest.param(
        view(foreign=10, foreign_recent=10, running=2),
        Decision(stop=2),
        id="stop-capped-by-running",
    ),
    pytest.param(
        view(foreign=10, foreign_recent=10, running=0, stopped_by_load=2),
        Decision(),
        id="over-nothing-to-stop",
    ),
    pytest.param(view(limit=0, running=1), Decision(stop=1), id="limit-0-stops-job"),
    pytest.param(
        view(foreign=3, foreign_recent=3, running=2, hysteresis=0),
        Decision(stop=1),
        id="no-hysteresis",
    ),
    # hysteresis band: nothing
    pytest.param(
        view(foreign=0.5, foreign_recent=0.5, running=4), Decision(), id="band-upper-edge"
    ),
    pytest.param(view(foreign=0.3, foreign_recent=0.3, running=4), Decision(), id="band-inside"),
    pytest.param(
        view(foreign=0.3, foreign_recent=0.3, running=4, stopped_by_load=2),
        Decision(),
        id="band-no-continue",
    ),
    pytest.param(
        view(foreign=1.4, foreign_recent=1.4, running=3, hysteresis=1.0), Decision(), id="wide-band"
    ),
    # starting and continuing
    pytest.param(view(), Decision(start=4), id="idle-starts-to-limit"),
    pytest.param(view(limit=2.7), Decision(start=3), id="fractional-limit-plus-band"),
    pytest.param(view(limit=2.4), Decision(start=2), id="fractional-limit-below-band"),
    pytest.param(view(limit=0), Decision(), id="limit-0-starts-nothing"),
    pytest.param(
        view(running=1, stopped_by_load=2), Decision(cont=2, start=1), id="continue-before-start"
    ),
    pytest.param(view(running=1, stopped_by_load=5), Decision(cont=3), id="continue-only-room"),
    pytest.param(
        view(running=1, stopped_by_load=1, stopped_by_user=1),
        Decision(cont=2, start=1),
        id="continue-user-stopped-in-run",
    ),
    pytest.param(
        view(foreign=1.2, foreign_recent=1.2, running=1), Decision(start=2), id="foreign-takes-room"
    ),
    # settle: foreign_recent
    pytest.param(
        view(foreign=0, foreign_recent=3.2, running=1, stopped_by_load=1),
        Decision(),
        id="recent-foreign-blocks-continue",
    ),
    pytest.param(
        view(foreign=0, foreign_recent=2.2, running=0, stopped_by_load=1),
        Decision(cont=1, start=1),
        id="recent-foreign-limits-room",
    ),
    pytest.param(
        view(foreign=0, foreign_recent=9, running=4),
        Decision(),
        id="recent-high-current-low-no-stop",
    ),
    pytest.param(
        view(foreign=3, foreign_recent=9, running=3),
        Decision(stop=2),
        id="stop-uses-current-not-recent",
    ),
    # QUIT
    pytest.param(
        view(mode=Mode.QUIT, stopped_by_load=2), Decision(cont=2), id="quit-continues-never-starts"
    ),
    pytest.param(view(mode=Mode.QUIT, running=1), Decision(), id="quit-idle-starts-nothing"),
    pytest.param(
        view(mode=Mode.QUIT, foreign=2, foreign_recent=2, running=4),
        Decision(stop=2),
        id="quit-still-stops-over-limit",
    ),
    # pending
    pytest.param(view(pending=False), Decision(), id="no-pending-starts-nothing"),
    pytest.param(
        view(pending=False, stopped_by_load=2), Decision(cont=2), id="no-pending-still-continues"
    ),
    # memory
    pytest.param(
        view(memfree=1000 * MB, mem_available=2000 * MB), Decision(start=4), id="mem-enough"
    ),
    pytest.param(
        view(memfree=1000 * MB, mem_available=999 * MB, running=1, stopped_by_load=1),
        Decision(cont=1),
        id="mem-low-starts-nothing-continues",
    ),
    pytest.param(
        view(memfree=1000 * MB, mem_available=500 * MB, running=2),
        Decision(),
        id="mem-at-half-no-evict",
    ),
    pytest.param(
        view(memfree=1000 * MB, mem_available=499 * MB, running=2, since_evict=5, settle=2),
        Decision(evict=1),
        id="mem-below-half-evicts-one",
    ),
    pytest.param(
        view(memfree=1000 * MB, mem_available=499 * MB, running=2, since_evict=2, settle=2),
        Decision(evict=1),
        id="mem-evict-exactly-settle",
    ),
    pytest.param(
        view(memfree=1000 * MB, mem_available=10 * MB, running=2, since_evict=1, settle=2),
        Decision(),
        id="mem-evict-waits-settle",
    ),
    pytest.param(
        view(memfree=1000 * MB, mem_available=10 * MB, stopped_by_user=1, foreign_recent=9),
        Decision(evict=1),
        id="mem-evicts-stopped-job",
    ),
    pytest.param(
        view(memfree=1000 * MB, mem_available=10 * MB), Decision(), id="mem-no-jobs-no-evict"
    ),
    pytest.param(
        view(memfree=1000 * MB, mem_available=10 * MB, running=4, foreign=2, foreign_recent=2),
        Decision(stop=2, evict=1),
        id="mem-evict-with-stop",
    ),
    pytest.param(view(memfree=0, mem_available=10), Decision(start=4), id="memfree-off"),
    pytest.param(view(memfree=1000 * MB, mem_available=None), Decision(start=4), id="mem-unknown"),
]


@pytest.mark.parametrize(("v", "expected"), DECIDE_CASES)
def test_decide(v: View, expected: Decision) -> None:
    assert decide(v) == expected


def test_decision_truthiness() -> None:
    assert not Decision()
    for field in ("stop", "cont", "start", "evict"):
        assert Decision(**{field: 1})


# ---------------------------------------------------------------------- decide (properties)

# Loads and limits as a scheduler sees them: bounded, finite, with foreign_recent the
# maximum over a window that includes the current interval (so >= foreign).
finite = {"allow_nan": False, "allow_infinity": False}


@st.composite
def views(draw, modes=(Mode.RUN, Mode.QUIT)) -> View:
    foreign = draw(st.floats(0, 64, **finite))
    memfree = draw(st.sampled_from([0, 1000]))
    return View(
        mode=draw(st.sampled_from(modes)),
        limit=draw(st.floats(0, 64, **finite)),
        foreign=foreign,
        foreign_recent=foreign + draw(st.floats(0, 32, **finite)),
        running=draw(st.integers(0, 64)),
        stopped_by_load=draw(st.integers(0, 16)),
        stopped_by_user=draw(st.integers(0, 16)),
        pending=draw(st.booleans()),
        hysteresis=draw(st.floats(0, 2, **finite)),
        mem_available=draw(st.one_of(st.none(), st.integers(0, 3000))),
        memfree=memfree,
        since_evict=draw(st.floats(0, 10, **finite)),
        settle=draw(st.floats(0, 5, **finite)),
    )


def apply(v: View, d: Decision) -> View:
    """The view after the scheduler carried out ``d`` (same foreign load)."""
    cont_load = min(d.cont, v.stopped_by_load)
    cont_user = d.cont - cont_load
    return replace(
        v,
        running=v.running - d.stop + d.cont + d.start,
        stopped_by_load=v.stopped_by_load
        - cont_load
        + (d.stop if v.mode is not Mode.PAUSED else 0),
        stopped_by_user=v.stopped_by_user - cont_user + (d.stop if v.mode is Mode.PAUSED else 0),
        since_evict=0.0 if d.evict else v.since_evict,
    )


@settings(max_examples=600, deadline=None)
@given(views())
def test_decision_properties(v: View) -> None:
    d = decide(v)
    # consistent
    assert min(d.stop, d.cont, d.start, d.evict) >= 0
    assert d.stop <= v.running
    assert d.cont <= v.stopped_by_load + v.stopped_by_user
    assert not (d.stop and (d.cont or d.start)), "never stops and starts in one decision"
    assert d.evict <= 1
    if v.mode is Mode.QUIT or not v.pending:
        assert d.start == 0

    again = decide(apply(v, d))
    if d.stop:
        # a stop is not undone at once
        assert again.cont == 0 and again.start == 0, (d, again)
        # the fewest: enough (unless every job is stopped), and one fewer would not be
        bound = v.limit + v.hysteresis
        if d.stop < v.running:
            assert v.foreign + v.running - d.stop <= bound + 1e-6
        assert v.foreign + v.running - (d.stop - 1) > bound
    else:
        # a start (or continue) never causes a stop at the same foreign load
        assert again.stop == 0, (d, again)

    # running jobs never exceed floor(limit + h - foreign_recent) unless already more
    # (with the same tolerance for rounding as the policy)
    after = v.running - d.stop + d.cont + d.start
    bound = math.floor(v.limit + v.hysteresis - v.foreign_recent + 1e-9)
    assert after <= max(v.running, bound)
    if v.running > bound:
        assert d.cont == 0 and d.start == 0


@settings(max_examples=100, deadline=None)
@given(views(modes=(Mode.PAUSED,)))
def test_paused_stops_everything_whatever_the_load(v: View) -> None:
    assert decide(v) == Decision(stop=v.running)


@settings(max_examples=100, deadline=None)
@given(views(modes=(Mode.RUN,)))
def test_memory(v: View) -> None:
    d = decide(v)
    low = v.memfree > 0 and v.mem_available is not None and v.mem_available < v.memfree
    if low:
        assert d.start == 0
    if d.evict:
        assert low and v.mem_available < v.memfree / 2
        assert v.since_evict >= v.settle
        assert v.running + v.stopped_by_load + v.stopped_by_user > 0
