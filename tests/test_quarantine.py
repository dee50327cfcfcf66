"""Hosts that only fail: the pure decision with a fake clock, then two real schedulers of
one jobfile, one of which fails every job at once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    run_cmd,
    start_scheduler,
    status,
    text_of,
    wait_exit,
    wait_for,
)

from pbq.quarantine import BACKOFF_MAX, End, HostHealth, Peer, backoff, should_quarantine

T = 1_800_000_000.0


def fails(n: int, start: float = T, runtime: float = 0.1) -> list[End]:
    return [End(start + i, False, runtime) for i in range(n)]


def peer(name: str = "b", success: float | None = T + 2, alive: bool = True,
         quarantined: bool = False) -> Peer:
    return Peer(name, alive, success, quarantined)


def test_quick_failures_while_another_host_succeeds_quarantine() -> None:
    why = should_quarantine(fails(5), [peer()], after=5, quick=5.0)
    assert why is not None and "host b" in why
    # Faster than b's heartbeat: its success a little before the streak counts too.
    assert should_quarantine(fails(5), [peer(success=T - 30)], after=5, quick=5.0) is not None


@pytest.mark.parametrize(
    ("recent", "peers", "after"),
    [
        pytest.param(fails(4), [peer()], 5, id="too-few-failures"),
        pytest.param(fails(4) + [End(T + 5, True, 0.1)], [peer()], 5, id="a-success-among-them"),
        pytest.param(fails(5, runtime=30.0), [peer()], 5, id="slow-failures-are-the-jobs"),
        pytest.param(fails(5), [peer(success=None)], 5, id="every-host-fails-alike"),
        pytest.param(fails(5), [peer(success=T - 100)], 5, id="peer-success-long-before"),
        pytest.param(fails(5), [Peer("b", True, T + 2, False, 5)], 5, id="peer-fails-alike-too"),
        pytest.param(fails(5), [peer(alive=False)], 5, id="peer-not-alive"),
        pytest.param(fails(5), [peer(quarantined=True)], 5, id="last-healthy-host-never"),
        pytest.param(fails(5), [], 5, id="alone"),
        pytest.param(fails(50), [peer()], 0, id="off"),
    ],
)
def test_no_quarantine(recent: list[End], peers: list[Peer], after: int) -> None:
    assert should_quarantine(recent, peers, after=after, quick=5.0) is None


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [backoff(i) for i in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert backoff(20) == BACKOFF_MAX == 3600.0


def test_health_quarantines_releases_and_doubles_then_a_success_resets() -> None:
    h = HostHealth(after=3, quick=5.0)
    for e in fails(3):
        h.ended(e)
    assert h.suspect()
    now = T + 10
    assert h.check(now, [peer(success=T + 5)]) is not None
    assert h.quarantined(now) and h.until == now + 60
    assert h.check(now + 1, [peer(success=T + 5)]) is None, "already quarantined"
    assert not h.quarantined(now + 61)
    h.ended(End(now + 62, False, 0.1))  # one more quick failure after the back-off
    assert h.check(now + 62, [peer(success=T + 5)]) is not None
    assert h.until == now + 62 + 120 and h.quarantines == 2
    h.ended(End(now + 200, True, 1.0))
    assert not h.suspect() and h.level == 0 and h.last_success == now + 200


def test_cont_lifts_and_forgets_the_streak() -> None:
    h = HostHealth(after=2, quick=5.0)
    for e in fails(2):
        h.ended(e)
    assert h.check(T + 5, [peer()]) is not None
    assert h.lift() and not h.quarantined(T + 6)
    assert not h.suspect() and list(h.recent) == []


# ---------------------------------------------------------------------- real processes


@pytest.mark.timeout(120)
def test_a_host_whose_jobs_all_fail_is_quarantined_while_another_drains_the_queue(
    tmp_path: Path,
) -> None:
    hf = hostfile(tmp_path, "* linux 2 2 0\n")
    config(tmp_path, FAST_CONFIG)
    rec = tmp_path / "rec"
    # Fails at once on host a (its "broken" environment); takes 0.3 s on b.
    job = """sh -c '[ "$PBQ_HOST" = b ] && sleep 0.3 && echo {} >> {}'"""
    lines = [job.format(i, rec) for i in range(30)]
    jf = jobfile(tmp_path, lines)
    b = start_scheduler(hf, jf, host="b")
    a = None
    try:
        wait_for(lambda: status(jf, "b").get("last_success"), what="a success on host b")
        a = start_scheduler(hf, jf, host="a")
        wait_for(lambda: status(jf, "a").get("quarantined"), what="host a quarantined")
        # The status is written mid-pass, the pass's log lines at its end: poll for them.
        log = wait_for(
            lambda: (t := text_of(hostfile_path(jf, "a", "log"))) and "quarantined for" in t and t,
            what="the quarantine in the log",
        )
        assert "quarantined for 60s: its last 5 jobs all failed" in log and "host b" in log
        check = run_cmd("pbq", "control", hf, jf, "check", "a")
        assert b"a: quarantined" in check.stdout
        wait_for(lambda: len(lines_of(rec)) + status(jf, "a").get("failed", 0) == len(lines),
                 timeout=60, what="host b drains the queue")
        failed_on_a = status(jf, "a")["failed"]
        assert 5 <= failed_on_a <= 6, "a took nothing new once quarantined"
        assert len(lines_of(hostfile_path(jf, "a", "error"))) == failed_on_a
        assert status(jf, "b")["failed"] == 0 and not status(jf, "b").get("quarantined")
        # `cont` lifts it.
        out = run_cmd("pbq", "control", hf, jf, "cont", "a")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: not status(jf, "a").get("quarantined"), what="quarantine lifted")
        wait_for(
            lambda: "quarantine lifted" in text_of(hostfile_path(jf, "a", "log")),
            what="the lift in the log",
        )
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                wait_exit(p, 30)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__, "-v"]))
