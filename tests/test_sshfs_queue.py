"""One queue shared over sshfs: two "machines" (two sshfs mounts of one directory through a
private sshd), ``--lock soft``, one scheduler per mount, appends through both mounts.

sshfs has no flock that works across mounts, so only the soft lock (an O_EXCL lock file)
can keep the jobfile consistent.  Under ``CI=true`` this test must run: a missing sshd or
sshfs fails it instead of skipping it (``sshinfra.require_infra``).
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import sshinfra
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    kill_all,
    lines_of,
    processes_mentioning,
    run_cmd,
    start_scheduler,
    status,
    wait_exit,
    wait_for,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.root]


def test_soft_lock_over_two_sshfs_mounts_drains_exactly_once(tmp_path: Path) -> None:
    sshinfra.require_infra()
    rec = tmp_path / "rec"  # local: the jobs' own appends are not what is tested here
    first, per_appender, batches = 200, 100, 5
    total = first + 2 * per_appender
    with sshinfra.shared_dir_two_mounts(tmp_path) as m:
        try:
            hostfile(m.real_dir, "* linux 4 4 0\n")
            config(m.real_dir, FAST_CONFIG.replace("[jobfile]\n", '[jobfile]\nlock = "soft"\n'))
            jobfile(m.real_dir, [f"echo {i} >> {rec}" for i in range(first)])
            jf_a, jf_b = m.mount_a / "jobfile", m.mount_b / "jobfile"
            hf_a, hf_b = m.mount_a / "hostfile", m.mount_b / "hostfile"
            sa = start_scheduler(hf_a, jf_a, "--lock", "soft", host="sa")
            sb = start_scheduler(hf_b, jf_b, "--lock", "soft", host="sb")
            errors: list[str] = []

            def appender(jf: Path, base: int) -> None:
                size = per_appender // batches
                for b in range(batches):
                    ids = range(base + b * size, base + (b + 1) * size)
                    data = "".join(f"echo {i} >> {rec}\n" for i in ids).encode()
                    r = run_cmd(
                        "jobfile-append", "--lock", "soft", jf, "-", input=data, cwd=tmp_path
                    )
                    if r.returncode != 0:
                        errors.append(
                            f"{jf}: {r.returncode} {r.stderr.decode(errors='replace').strip()}"
                        )

            threads = [
                threading.Thread(target=appender, args=(jf, first + k * per_appender))
                for k, jf in enumerate((jf_a, jf_b))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not errors, errors
            wait_for(
                lambda: len(lines_of(rec)) >= total, timeout=120, what=f"{total} jobs recorded"
            )
            for hf, jf, host, p in ((hf_a, jf_a, "sa", sa), (hf_b, jf_b, "sb", sb)):
                r = run_cmd("pbq", "control", hf, jf, "quit", host, timeout=60, cwd=tmp_path)
                assert r.returncode == 0, r.stdout + r.stderr
                assert wait_exit(p, 60) == 0
            # Nothing left over that could run a second time.
            r = run_cmd(
                "pbq-single",
                "--lock",
                "soft",
                "--host",
                "sz",
                "--exit-when-empty",
                hf_a,
                jf_a,
                timeout=60,
                cwd=tmp_path,
            )
            assert r.returncode == 0, r.stderr
            got = Counter(int(x) for x in lines_of(rec))
            assert got == Counter(range(total)), {i: n for i, n in got.items() if n != 1}
            done = {h: status(m.real_dir / "jobfile", h).get("done", 0) for h in ("sa", "sb")}
            assert sum(done.values()) == total and all(done.values()), done
            for h in ("sa", "sb"):
                assert lines_of(hostfile_path(m.real_dir / "jobfile", h, "error")) == []
                log = hostfile_path(m.real_dir / "jobfile", h, "log").read_text()
                assert "ERROR" not in log and "rewritten" not in log, log
            assert not (m.real_dir / "jobfile.lock.soft").exists()
        finally:
            # Schedulers and jobs first (not the sshd/sshfs processes), so the mounts are not busy.
            kill_all([p for p in processes_mentioning(str(tmp_path)) if not _is_infra(p)])


def _is_infra(p) -> bool:
    try:
        name = p.name()
    except Exception:  # noqa: BLE001 - gone already
        return True
    return name.startswith(("ssh", "sftp"))
