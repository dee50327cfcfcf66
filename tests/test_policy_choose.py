"""Tests for pbq.policy.choose: which jobs a decision's counts apply to (a pure function)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbq.policy import Candidate, Choice, Decision, Mode, View, choose, decide


def job(seq: int, started: float, stopped: bool = False) -> Candidate:
    return Candidate(seq=seq, started=started, stopped=stopped)


# Four running jobs started at 10, 20, 30, 40 and three stopped ones at 15, 25, 35.
RUNNING = [job(1, 10.0), job(2, 20.0), job(3, 30.0), job(4, 40.0)]
STOPPED = [job(5, 15.0, True), job(6, 25.0, True), job(7, 35.0, True)]
MIXED = [STOPPED[2], RUNNING[1], STOPPED[0], RUNNING[3], RUNNING[0], STOPPED[1], RUNNING[2]]


@pytest.mark.parametrize(
    ("jobs", "decision", "expected"),
    [
        pytest.param(MIXED, Decision(), Choice(), id="nothing"),
        pytest.param(MIXED, Decision(start=3), Choice(start=3), id="start-passes-through"),
        pytest.param(MIXED, Decision(stop=1), Choice(stop=(4,)), id="stop-newest"),
        pytest.param(MIXED, Decision(stop=3), Choice(stop=(4, 3, 2)), id="stop-newest-first"),
        pytest.param(MIXED, Decision(cont=1), Choice(cont=(5,)), id="cont-oldest"),
        pytest.param(MIXED, Decision(cont=2), Choice(cont=(5, 6)), id="cont-oldest-first"),
        pytest.param(MIXED, Decision(evict=1), Choice(evict=(4,)), id="evict-newest-running"),
        pytest.param(MIXED, Decision(cont=1, start=2), Choice(cont=(5,), start=2),
                     id="cont-and-start"),
        pytest.param(MIXED, Decision(stop=2, evict=1), Choice(stop=(3, 2), evict=(4,)),
                     id="evicted-is-not-stopped"),
        pytest.param(STOPPED, Decision(cont=1, evict=1), Choice(cont=(5,), evict=(7,)),
                     id="evict-newest-stopped"),
        pytest.param([job(1, 10.0, True)], Decision(cont=1, evict=1), Choice(evict=(1,)),
                     id="evicted-is-not-continued"),
        pytest.param([job(1, 10.0)], Decision(stop=1, evict=1), Choice(evict=(1,)),
                     id="evicted-is-not-stopped-either"),
        pytest.param([], Decision(stop=1, cont=1, evict=1, start=1), Choice(start=1),
                     id="no-jobs"),
        pytest.param([job(3, 0.0), job(1, 0.0), job(2, 0.0)], Decision(stop=2),
                     Choice(stop=(3, 2)), id="ties-broken-by-seq-stop"),
        pytest.param([job(3, 0.0, True), job(1, 0.0, True), job(2, 0.0, True)],
                     Decision(cont=2), Choice(cont=(1, 2)), id="ties-broken-by-seq-cont"),
        pytest.param([job(3, 5.0), job(9, 5.0), job(1, 5.0)], Decision(evict=1),
                     Choice(evict=(9,)), id="ties-broken-by-seq-evict"),
        pytest.param([job(2, 0.0), job(1, 50.0)], Decision(stop=1), Choice(stop=(1,)),
                     id="unknown-start-counts-as-oldest"),
    ],
)
def test_choose(jobs: list[Candidate], decision: Decision, expected: Choice) -> None:
    assert choose(jobs, decision) == expected


def test_evict_several_newest_first() -> None:
    # Choice.evict is documented "newest first", as Choice.stop is.
    assert choose(RUNNING, Decision(evict=2)).evict == (4, 3)


@pytest.mark.parametrize(
    ("jobs", "decision", "expected"),
    [
        pytest.param(RUNNING, Decision(stop=9), Choice(stop=(4, 3, 2, 1)), id="stop-9-of-4"),
        pytest.param(RUNNING[:2], Decision(stop=3), Choice(stop=(2, 1)), id="stop-3-of-2"),
        pytest.param(MIXED, Decision(stop=5), Choice(stop=(4, 3, 2, 1)), id="stop-5-of-4"),
        pytest.param(STOPPED, Decision(cont=9), Choice(cont=(5, 6, 7)), id="cont-9-of-3"),
        pytest.param(RUNNING[:2], Decision(evict=3), Choice(evict=(2, 1)), id="evict-3-of-2"),
        pytest.param(RUNNING, Decision(evict=9), Choice(evict=(4, 3, 2, 1)),
                     id="evict-9-of-4"),
        pytest.param([job(1, 1.0)], Decision(stop=2), Choice(stop=(1,)), id="stop-2-of-1"),
    ],
)
def test_counts_larger_than_the_candidates_are_capped(
    jobs: list[Candidate], decision: Decision, expected: Choice
) -> None:
    got = choose(jobs, decision)
    # Only the sizes are at stake here: the order of several evictions has its own test.
    assert replace(got, evict=tuple(sorted(got.evict, reverse=True))) == expected


def test_stop_every_running_job_while_evicting_one() -> None:
    """decide() over the limit and short of memory: stop all 3 running jobs and evict one.
    The evicted one can't be stopped too, so both others must be."""
    view = View(mode=Mode.RUN, limit=2.0, foreign=4.0, foreign_recent=4.0, running=3,
                stopped_by_load=0, stopped_by_user=0, pending=False, memfree=1000,
                mem_available=100)
    d = decide(view)
    assert d == Decision(stop=3, evict=1)
    assert choose(RUNNING[:3], d) == Choice(stop=(2, 1), evict=(3,))


def test_input_order_does_not_matter() -> None:
    d = Decision(stop=2, cont=2, evict=1)
    assert choose(MIXED, d) == choose(list(reversed(MIXED)), d) == choose(RUNNING + STOPPED, d)


# ---------------------------------------------------------------------- properties


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    """Jobs with distinct seqs; start times drawn from a few values so ties happen."""
    seqs = draw(st.lists(st.integers(1, 1000), unique=True, max_size=12))
    return [Candidate(seq, draw(st.sampled_from([0.0, 1.0, 2.5, 7.0])), draw(st.booleans()))
            for seq in seqs]


def check_choice(jobs: list[Candidate], d: Decision, c: Choice) -> None:
    """The chosen sets are disjoint subsets of the candidates, of the right sizes and order."""
    by_seq = {j.seq: j for j in jobs}
    chosen = [*c.stop, *c.cont, *c.evict]
    assert len(chosen) == len(set(chosen)), "no job is chosen twice"
    assert set(chosen) <= set(by_seq)
    assert all(not by_seq[s].stopped for s in c.stop)
    assert all(by_seq[s].stopped for s in c.cont)
    n_evict = min(d.evict, len(jobs))
    assert len(c.evict) == n_evict
    running_left = sum(1 for j in jobs if not j.stopped and j.seq not in c.evict)
    stopped_left = sum(1 for j in jobs if j.stopped and j.seq not in c.evict)
    assert len(c.stop) == min(d.stop, running_left)
    assert len(c.cont) == min(d.cont, stopped_left)
    assert c.start == d.start

    def age(seq: int) -> tuple[float, int]:
        return by_seq[seq].started, seq

    # The evicted are the newest of all; stop takes the newest running, newest first;
    # cont the oldest stopped, oldest first.
    newest = sorted(jobs, key=lambda j: (j.started, j.seq), reverse=True)
    assert set(c.evict) == {j.seq for j in newest[:n_evict]}
    assert list(c.stop) == sorted(c.stop, key=age, reverse=True)
    assert list(c.cont) == sorted(c.cont, key=age)
    rest = [j for j in newest if j.seq not in c.evict]
    assert list(c.stop) == [j.seq for j in rest if not j.stopped][: len(c.stop)]
    assert list(c.cont) == [j.seq for j in reversed(rest) if j.stopped][: len(c.cont)]


@given(data=st.data(), jobs=candidates())
def test_choice_within_the_candidates(data: st.DataObject, jobs: list[Candidate]) -> None:
    n_running = sum(1 for j in jobs if not j.stopped)
    n_stopped = len(jobs) - n_running
    d = Decision(
        stop=data.draw(st.integers(0, n_running), label="stop"),
        cont=data.draw(st.integers(0, n_stopped), label="cont"),
        evict=data.draw(st.integers(0, len(jobs)), label="evict"),
        start=data.draw(st.integers(0, 5), label="start"),
    )
    check_choice(jobs, d, choose(jobs, d))


@given(jobs=candidates(), stop=st.integers(0, 30), cont=st.integers(0, 30),
       evict=st.integers(0, 30), start=st.integers(0, 5))
def test_choice_with_any_counts(jobs: list[Candidate], stop: int, cont: int, evict: int,
                                start: int) -> None:
    d = Decision(stop=stop, cont=cont, evict=evict, start=start)
    check_choice(jobs, d, choose(jobs, d))
