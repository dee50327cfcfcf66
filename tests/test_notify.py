"""[notify] command: run on a job's final failure and once when the host is drained."""

from __future__ import annotations

import json
from pathlib import Path

from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    is_live,
    jobfile,
    kill_all,
    processes_mentioning,
    start_scheduler,
    text_of,
    wait_exit,
    wait_for,
    write,
)

KEYS = ("PBQ_EVENT", "PBQ_JOB", "PBQ_EXIT", "PBQ_COMMAND", "PBQ_HOST", "PBQ_JOBFILE")


def events(path: Path) -> list[dict]:
    try:
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln]
    except (OSError, ValueError):
        return []


def test_notify_on_final_failure_and_once_on_drain(tmp_path: Path) -> None:
    got = tmp_path / "events.jsonl"
    script = write(tmp_path / "notify.py", f"""#!/usr/bin/env python3
import json, os
with open({str(got)!r}, "a") as f:
    f.write(json.dumps({{k: os.environ.get(k) for k in {KEYS!r}}}) + "\\n")
""", mode=0o755)
    body = FAST_CONFIG.replace("[scheduler]\n", "[scheduler]\nretries = 1\n")
    config(tmp_path, body + f'[notify]\ncommand = "{script} --flag"\ntimeout = 10\n')
    jf = jobfile(tmp_path, ["true", "sh -c 'exit 3'", "true"])
    p = start_scheduler(hostfile(tmp_path), jf, "--exit-when-empty")
    try:
        assert wait_exit(p, 60) == 0
        wait_for(lambda: len(events(got)) >= 2, 30, "two notifications")
    finally:
        kill_all(processes_mentioning(str(jf)))
    evs = events(got)
    assert sorted(e["PBQ_EVENT"] for e in evs) == ["drained", "failed"], evs
    failed = next(e for e in evs if e["PBQ_EVENT"] == "failed")
    assert failed["PBQ_JOB"] == "2" and failed["PBQ_EXIT"] == "3"
    assert failed["PBQ_COMMAND"] == "sh -c 'exit 3'"
    assert failed["PBQ_HOST"] == "h1" and failed["PBQ_JOBFILE"] == str(jf)


def test_a_hanging_notify_command_is_killed_and_logged_once(tmp_path: Path) -> None:
    config(tmp_path, FAST_CONFIG + '[notify]\ncommand = "sleep 3600"\ntimeout = 0.5\n')
    jf = jobfile(tmp_path, ["sh -c 'exit 1'", "sh -c 'exit 2'"])
    p = start_scheduler(hostfile(tmp_path), jf)
    log = tmp_path / "jobfile.h1.log"
    try:
        wait_for(lambda: "timeout of 0.5 s" in text_of(log), 30, "the timeout in the log")
        wait_for(lambda: not [q for q in processes_mentioning("sleep 3600") if is_live(q)],
                 30, "the notify command killed")
        assert p.poll() is None, "the scheduler runs on"
    finally:
        p.terminate()
        wait_exit(p, 30)
        kill_all(processes_mentioning(str(jf)) + processes_mentioning("sleep 3600"))
    assert log.read_text().count("notify command") == 1
