"""Tests for pbq.host.recovery.plan_recovery: what a restarted scheduler does with each job
the last run left on record (a pure function of the jobs, the committed operation number
and what was probed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pbq.host.jobs import Job, JobState, Outcome
from pbq.host.recovery import Action, Probe, Step, plan_recovery

S = JobState
A = Action

COMMITTED = 10  # the jobfile's last committed operation of host h1
GONE = Probe()  # nothing found: the process is gone and left no record
ALIVE = Probe(alive=True)
EXITED = Probe(exit=Outcome(exit_code=3), ended_at=50.0)


@dataclass(frozen=True)
class Row:
    state: JobState
    probe: Probe
    action: Action
    why: tuple[str, ...] = ()  # words the log line must contain ("" when there is none)
    not_why: tuple[str, ...] = ()  # words it must not contain
    job: dict[str, Any] = field(default_factory=dict)  # Job fields besides the state
    drm: str | None = None


def started(**kw: Any) -> dict[str, Any]:
    """Fields of a job whose process was recorded (op committed)."""
    return {"op": 5, "pid": 4242, "pid_start": 1.5, "started": 100.0, **kw}


ROWS: dict[str, Row] = {
    # -- put-backs under way
    "requeue-front-committed": Row(S.REQUEUE_FRONT, GONE, A.FORGET,
                                   job={"op": 3, "putback_op": COMMITTED}),
    "requeue-end-committed-earlier": Row(S.REQUEUE_END, GONE, A.FORGET,
                                         job={"op": 3, "putback_op": 4}),
    "requeue-front-not-committed": Row(S.REQUEUE_FRONT, GONE, A.BACK_FRONT,
                                       ("being put back", "POSSIBLE DUPLICATE"),
                                       job={"op": 3, "putback_op": COMMITTED + 1}),
    "requeue-end-not-committed": Row(S.REQUEUE_END, GONE, A.BACK_END,
                                     ("being put back", "POSSIBLE DUPLICATE"),
                                     job={"op": 3, "putback_op": COMMITTED + 1}),
    "requeue-front-not-written-ahead": Row(S.REQUEUE_FRONT, GONE, A.BACK_FRONT,
                                           ("being put back",), job={"op": 3}),
    "requeue-end-not-written-ahead": Row(S.REQUEUE_END, GONE, A.BACK_END,
                                         ("being put back",), job={"op": 3}),
    # -- takes that never committed are still pending in the jobfile
    "claimed-take-not-committed": Row(S.CLAIMED, GONE, A.FORGET, ("never taken",),
                                      job={"op": COMMITTED + 1}),
    "starting-take-not-committed": Row(S.STARTING, ALIVE, A.FORGET, ("never taken",),
                                       job={"op": COMMITTED + 1}),
    "claimed-committed": Row(S.CLAIMED, GONE, A.KEEP, job={"op": COMMITTED}),
    "claimed-committed-earlier": Row(S.CLAIMED, GONE, A.KEEP, job={"op": 1}),
    # -- being started
    "starting-nothing-found": Row(S.STARTING, GONE, A.BACK_FRONT,
                                  ("being started", "POSSIBLE DUPLICATE"), job={"op": 5}),
    "starting-found-alive": Row(S.STARTING, Probe(alive=True, pid=99, pid_start=2.0), A.ADOPT,
                                job={"op": 5}),
    "starting-found-stopped": Row(S.STARTING, Probe(alive=True, stopped=True, pid=99),
                                  A.ADOPT, job={"op": 5}),
    "starting-found-exited": Row(S.STARTING, Probe(pid=99, exit=Outcome(0)), A.FINISH,
                                 job={"op": 5}),
    "starting-found-gone": Row(S.STARTING, Probe(pid=99), A.BACK_FRONT,
                               ("did not finish", "POSSIBLE DUPLICATE"), job={"op": 5}),
    # -- ended, only the retry count left
    "settling": Row(S.SETTLING, GONE, A.SETTLE, job=started()),
    "settling-on-cluster": Row(S.SETTLING, GONE, A.SETTLE, job=started(), drm="slurm"),
    # -- held jobs
    "running-alive": Row(S.RUNNING, ALIVE, A.ADOPT, job=started()),
    "running-alive-stopped": Row(S.RUNNING, Probe(alive=True, stopped=True), A.ADOPT,
                                 job=started()),
    "stopped-alive": Row(S.STOPPED, Probe(alive=True, stopped=True), A.ADOPT,
                         job=started(stopped_by="load")),
    "running-gone-exit-record": Row(S.RUNNING, EXITED, A.FINISH, job=started()),
    "stopped-gone-exit-record": Row(S.STOPPED, EXITED, A.FINISH, job=started()),
    "running-gone-no-record": Row(S.RUNNING, GONE, A.BACK_FRONT,
                                  ("did not finish", "gone", "POSSIBLE DUPLICATE", "front"),
                                  job=started()),
    "evicting-gone": Row(S.EVICTING, GONE, A.BACK_FRONT, ("free memory", "front"),
                         ("POSSIBLE DUPLICATE",), job=started()),
    "evicting-gone-exit-record": Row(S.EVICTING, EXITED, A.BACK_FRONT, ("free memory",),
                                     job=started()),
    "evicting-alive": Row(S.EVICTING, ALIVE, A.ADOPT, job=started()),
    "timing-out-alive": Row(S.TIMING_OUT, ALIVE, A.ADOPT, job=started()),
    "timing-out-gone-exit-record": Row(S.TIMING_OUT, EXITED, A.FINISH, job=started()),
    "timing-out-gone-no-record": Row(S.TIMING_OUT, GONE, A.FINISH, job=started()),
    "cancelling-alive": Row(S.CANCELLING, ALIVE, A.ADOPT, job=started()),
    "cancelling-gone-exit-record": Row(S.CANCELLING, EXITED, A.FINISH, job=started()),
    "cancelling-gone-no-record": Row(S.CANCELLING, GONE, A.FINISH, job=started()),
    "cluster-cancelling": Row(S.CANCELLING, GONE, A.ADOPT, ("c-4711",),
                              job=started(pid=None, cluster_id="c-4711"), drm="slurm"),
    "terminating-gone": Row(S.TERMINATING, GONE, A.BACK_FRONT, ("terminated", "front"),
                            ("POSSIBLE DUPLICATE",), job=started()),
    "terminating-gone-exit-record": Row(S.TERMINATING, EXITED, A.BACK_FRONT, ("terminated",),
                                        job=started()),
    "terminating-alive": Row(S.TERMINATING, ALIVE, A.ADOPT, job=started()),
    "terminated-with-pid-gone": Row(S.TERMINATED, GONE, A.BACK_FRONT, ("terminated", "front"),
                                    ("POSSIBLE DUPLICATE",), job=started()),
    # JobBook.terminated() clears the pid, so this is how a TERMINATED job is saved.
    "terminated-gone": Row(S.TERMINATED, GONE, A.BACK_FRONT, ("terminated", "front"),
                           ("POSSIBLE DUPLICATE", "being started"), job=started(pid=None)),
    # -- on a cluster head node
    "cluster-running-with-id": Row(S.RUNNING, GONE, A.ADOPT, ("re-attached", "slurm", "c-4711"),
                                   job=started(pid=None, cluster_id="c-4711"), drm="slurm"),
    "cluster-starting-with-id": Row(S.STARTING, GONE, A.ADOPT, ("slurm", "c-4711"),
                                    job={"op": 5, "cluster_id": "c-4711"}, drm="slurm"),
    "cluster-stopped-with-id": Row(S.STOPPED, GONE, A.ADOPT, ("c-4711",),
                                   job=started(pid=None, cluster_id="c-4711"), drm="slurm"),
    "cluster-found-by-ticket": Row(S.STARTING, Probe(cluster_id="c-99"), A.ADOPT,
                                   ("slurm", "c-99"), job={"op": 5}, drm="slurm"),
    "cluster-no-id": Row(S.STARTING, GONE, A.BACK_FRONT,
                         ("being submitted", "POSSIBLE DUPLICATE"), job={"op": 5}, drm="slurm"),
    "cluster-terminating": Row(S.TERMINATING, GONE, A.BACK_FRONT, ("cancelled", "front"),
                               job=started(pid=None, cluster_id="c-4711"), drm="slurm"),
    "cluster-terminated": Row(S.TERMINATED, GONE, A.BACK_FRONT, ("cancelled", "front"),
                              job=started(pid=None, cluster_id="c-4711"), drm="slurm"),
    "cluster-claimed": Row(S.CLAIMED, GONE, A.KEEP, job={"op": 5}, drm="slurm"),
    "cluster-take-not-committed": Row(S.STARTING, GONE, A.FORGET, ("never taken",),
                                      job={"op": COMMITTED + 1}, drm="slurm"),
}


def plan_one(row: Row) -> Step:
    """The plan for one job (seq 7, line ``sleep 9``) of host h1."""
    fields: dict[str, Any] = {"op": 1, **row.job}
    job = Job(seq=7, line=b"sleep 9", state=row.state, **fields)
    steps = plan_recovery([job], COMMITTED, {7: row.probe}, "h1", row.drm)
    assert len(steps) == 1
    assert steps[0].job is job
    return steps[0]


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_plan(row: Row) -> None:
    step = plan_one(row)
    assert step.action is row.action
    for word in row.why:
        assert word in step.why
    for word in row.not_why:
        assert word not in step.why
    if "POSSIBLE DUPLICATE" in row.why:
        assert "h1.7" in step.why
        assert "sleep 9" in step.why  # the user can find the line


def test_every_action_is_planned_somewhere() -> None:
    assert {row.action for row in ROWS.values()} == set(Action)


def test_every_state_is_planned_somewhere() -> None:
    # QUEUED is never saved: a start queued ahead is saved as STARTING (in flight).
    assert {row.state for row in ROWS.values()} == set(JobState) - {JobState.QUEUED}


@pytest.mark.parametrize("name", ["running-alive", "starting-found-alive", "evicting-alive"])
def test_local_adopt_carries_the_probe(name: str) -> None:
    row = ROWS[name]
    assert plan_one(row).probe == row.probe


@pytest.mark.parametrize("stopped", [False, True])
def test_local_adopt_carries_the_stopped_flag(stopped: bool) -> None:
    row = Row(S.RUNNING, Probe(alive=True, stopped=stopped), A.ADOPT, job=started())
    assert plan_one(row).probe.stopped is stopped


def test_finish_carries_the_exit_record() -> None:
    step = plan_one(ROWS["running-gone-exit-record"])
    assert step.probe.exit == Outcome(exit_code=3)
    assert step.probe.ended_at == 50.0


@pytest.mark.parametrize(
    ("name", "cluster_id", "stopped"),
    [
        ("cluster-running-with-id", "c-4711", False),
        ("cluster-stopped-with-id", "c-4711", True),
        ("cluster-found-by-ticket", "c-99", False),
    ],
)
def test_cluster_adopt_probe(name: str, cluster_id: str, stopped: bool) -> None:
    probe = plan_one(ROWS[name]).probe
    assert probe == Probe(alive=True, stopped=stopped, cluster_id=cluster_id)


def test_saved_cluster_id_wins_over_the_probed_one() -> None:
    row = Row(S.RUNNING, Probe(cluster_id="other"), A.ADOPT, ("c-4711",), ("other",),
              job=started(pid=None, cluster_id="c-4711"), drm="slurm")
    assert plan_one(row).probe.cluster_id == "c-4711"


def test_plan_keeps_the_order_and_looks_up_probes_by_seq() -> None:
    jobs = [
        Job(seq=3, line=b"a", op=5, state=S.RUNNING, pid=30),
        Job(seq=1, line=b"b", op=5, state=S.RUNNING, pid=10),
        Job(seq=2, line=b"c", op=COMMITTED + 1, state=S.CLAIMED),
    ]
    probes = {1: ALIVE}  # seq 3 has no probe: nothing was found
    steps = plan_recovery(jobs, COMMITTED, probes, "h9", None)
    assert [s.job.seq for s in steps] == [3, 1, 2]
    assert [s.action for s in steps] == [A.BACK_FRONT, A.ADOPT, A.FORGET]
    assert "h9.3" in steps[0].why
    assert "h9.2" in steps[2].why


def test_no_jobs_no_steps() -> None:
    assert plan_recovery([], COMMITTED, {}, "h1", None) == []


def test_non_utf8_line_in_why() -> None:
    job = Job(seq=1, line=b"echo \xff", op=5, state=S.RUNNING, pid=10)
    (step,) = plan_recovery([job], COMMITTED, {}, "h1", None)
    assert step.action is A.BACK_FRONT
    assert "echo \udcff" in step.why  # surrogate-escaped, not an exception
