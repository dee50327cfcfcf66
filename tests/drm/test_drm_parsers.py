"""Parsers of the five systems against their real output formats (from their documentation and,
for Slurm 22.05 and Son of Grid Engine 8.1.9, from the real tools on this kind of machine)."""

from __future__ import annotations

import pytest

from pbq.drm import htcondor, lsf, sge, slurm, torque
from pbq.drm.base import ClusterState, DrmError, JobStatus

Q, H, R, S, E, D, U = (
    ClusterState.QUEUED,
    ClusterState.HELD,
    ClusterState.RUNNING,
    ClusterState.SUSPENDED,
    ClusterState.EXITING,
    ClusterState.DONE,
    ClusterState.UNKNOWN,
)

# --------------------------------------------------------------------------- Slurm

SCONTROL_FAILED = (
    "JobId=2 JobName=pbq-a UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 "
    "Nice=0 Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 TimeLimit=00:01:00 "
    "TimeMin=N/A SubmitTime=2026-11-22T02:57:26 Partition=debug NodeList=vm NumNodes=1 NumCPUs=1 "
    "NumTasks=1 CPUs/Task=1 TRES=cpu=1,mem=200M,node=1,billing=1 MinMemoryNode=200M "
    "Command=/tmp/sl/j.sh WorkDir=/tmp/sl StdErr=/tmp/sl/o.log StdIn=/dev/null "
    "StdOut=/tmp/sl/o.log Power= \n"
)


def test_slurm_submit_parse() -> None:
    assert slurm.parse_submit("42\n") == "42"
    assert slurm.parse_submit("42;cluster\n") == "42"
    with pytest.raises(DrmError):
        slurm.parse_submit("sbatch: error: Batch job submission failed: Invalid partition\n")


def test_slurm_squeue() -> None:
    out = (
        "1|FAILED|NonZeroExitCode\n3|PENDING|JobHeldUser\n2|SUSPENDED|JobHeldAdmin\n"
        "4|PENDING|Resources\n5|COMPLETING|None\n6|RUNNING|None\n7|COMPLETED|None\n"
        "8|CANCELLED|None\n9|TIMEOUT|TimeLimit\n10|PENDING|JobHeldAdmin\n11|REQUEUE_HOLD|x\n"
        "12|WEIRD|x\n"
    )
    got = slurm.parse_squeue(out)
    assert {k: v.state for k, v in got.items()} == {
        "1": D, "2": S, "3": H, "4": Q, "5": E, "6": R, "7": D, "8": D, "9": D, "10": H,
        "11": H, "12": U,
    }  # fmt: skip
    assert got["7"].exit_code == 0
    # squeue shows no exit code: a failed job's code is left to scontrol / the exit-code file.
    assert got["1"].exit_code is None and got["8"].exit_code is None
    assert got["5"].raw == "COMPLETING"


def test_slurm_scontrol_exit_codes() -> None:
    status = slurm.status_from_show_job(SCONTROL_FAILED)
    assert status == JobStatus(D, 3, "FAILED")
    cancelled_running = SCONTROL_FAILED.replace("JobState=FAILED", "JobState=CANCELLED").replace(
        "ExitCode=3:0", "ExitCode=0:9"
    )
    assert slurm.status_from_show_job(cancelled_running).exit_code == 137
    cancelled_pending = SCONTROL_FAILED.replace("JobState=FAILED", "JobState=CANCELLED").replace(
        "ExitCode=3:0", "ExitCode=0:0"
    )
    assert slurm.status_from_show_job(cancelled_pending).exit_code == 143  # never success
    timeout = SCONTROL_FAILED.replace("JobState=FAILED", "JobState=TIMEOUT").replace(
        "ExitCode=3:0", "ExitCode=0:15"
    )
    assert slurm.status_from_show_job(timeout).exit_code == 143
    ok = SCONTROL_FAILED.replace("JobState=FAILED", "JobState=COMPLETED").replace(
        "ExitCode=3:0", "ExitCode=0:0"
    )
    assert slurm.status_from_show_job(ok) == JobStatus(D, 0, "COMPLETED")
    running = SCONTROL_FAILED.replace("JobState=FAILED", "JobState=RUNNING")
    assert slurm.status_from_show_job(running).state is R
    held = SCONTROL_FAILED.replace(
        "JobState=FAILED Reason=NonZeroExitCode", "JobState=PENDING Reason=JobHeldAdmin"
    )
    assert slurm.status_from_show_job(held).state is H
    fields = slurm.parse_show_job(SCONTROL_FAILED)
    assert fields["MinMemoryNode"] == "200M" and fields["TimeLimit"] == "00:01:00"
    assert slurm.is_unknown_job("slurm_load_jobs error: Invalid job id specified")


def test_slurm_sacct() -> None:
    assert slurm.status_from_sacct("2|FAILED|3:0\n") == JobStatus(D, 3, "FAILED")
    assert slurm.status_from_sacct("2|COMPLETED|0:0\n").exit_code == 0
    assert slurm.status_from_sacct("") is None
    assert slurm.parse_exit_code("garbage") is None


# --------------------------------------------------------------------------- Grid Engine

QSTAT = """\
job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID
-----------------------------------------------------------------------------------------------------------------
      5 0.50000 sleep      root         r     11/22/2026 02:58:35 all.q@vm                           1
      6 0.00000 j.sh       root         hqw   11/22/2026 02:58:34                                    1
      7 0.50000 sleep      root         s     11/22/2026 02:58:35 all.q@vm                           1
      8 0.50000 a b c      root         dr    11/22/2026 02:58:35 all.q@vm                           1
      9 0.00000 bad        root         Eqw   11/22/2026 02:58:34                                    1
     10 0.00000 j.sh       root         qw    11/22/2026 02:58:34                                    2
     11 0.50000 held-run   root         hr    11/22/2026 02:58:35 all.q@vm                           1
     12 0.50000 moving     root         t     11/22/2026 02:58:35 all.q@vm                           1
"""

QACCT = """\
==============================================================
qname        all.q
hostname     vm
jobnumber    7
failed       0
exit_status  3
ru_wallclock 0s
==============================================================
qname        all.q
hostname     vm
jobnumber    7
failed       100 : assumedly after job
exit_status  137                  (Killed)
ru_wallclock 5s
"""


def test_sge_qstat_listing() -> None:
    got = sge.parse_qstat(QSTAT)
    assert {k: v.state for k, v in got.items()} == {
        "5": R, "6": H, "7": S, "8": E, "9": H, "10": Q, "11": R, "12": R,
    }  # fmt: skip
    assert got["9"].raw == "Eqw"
    assert sge.parse_qstat("") == {}


def test_sge_qacct_last_record_wins() -> None:
    assert sge.parse_qacct(QACCT) == 137
    first = QACCT.split("==============================================================\n")[1]
    assert sge.parse_qacct("=" * 62 + "\n" + first) == 3
    walltime = QACCT.replace(
        "failed       100 : assumedly after job",
        "failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit",
    )
    assert sge.parse_qacct(walltime) == 137
    not_started = QACCT.replace("exit_status  137                  (Killed)", "exit_status  0")
    assert sge.parse_qacct(not_started) == 143  # failed with exit 0: never success
    assert sge.parse_qacct("") is None


def test_sge_messages() -> None:
    assert sge.parse_submit("17\n") == "17"
    assert sge.parse_submit("18.1-10:1\n") == "18"
    with pytest.raises(DrmError):
        sge.parse_submit("Unable to run job: Error reading answer list from qmaster\n")
    assert sge.is_unknown_job('denied: job "5" does not exist')
    assert sge.is_unknown_job("error: job id 999 not found")
    assert sge.is_unknown_job("Following jobs do not exist: \n1")
    assert sge.action_failed(
        "Modify operation can not be applied on job-array task 6.1 in pending/hold state"
    )
    assert not sge.action_failed("root - suspended job 5")
    assert not sge.action_failed("modified hold of job 6")


# --------------------------------------------------------------------------- Torque / PBS

QSTAT_F = """\
Job Id: 179.host
    Job_Name = STDIN
    Job_Owner = user@host
    job_state = C
    queue = batchq
    server = host
    ctime = Fri Aug 29 14:55:55 2008
    Error_Path = host:/opt/moab/STDIN.e179
    Resource_List.nodes = node1
    Variable_List = PBS_O_HOME=/home/user,PBS_O_LOGNAME=user,
\tPBS_O_PATH=/usr/local/sbin:/usr/local/bin,PBS_O_SHELL=/bin/bash,PBS_O_HOST=host,
\tPBS_O_WORKDIR=/opt/moab,PBS_O_QUEUE=batchq
    sched_hint = Post job file processing error; job 179.host on host node1/0Ba
\td UID for job execution REJHOST=pala.cridomain MSG=cannot find user 'user'
    etime = Fri Aug 29 14:55:55 2008
    exit_status = -1

Job Id: 180.host
    Job_Name = pbq-a
    job_state = C
    exit_status = 127

Job Id: 181.host
    Job_Name = pbq-b
    job_state = E
    exit_status = 3

Job Id: 182.host
    job_state = R

Job Id: 183.host
    job_state = Q

Job Id: 184.host
    job_state = H

Job Id: 185.host
    job_state = S

Job Id: 186.host
    job_state = C
    exit_status = 271

Job Id: 187.host
    job_state = C

Job Id: 188.host
    job_state = C
    exit_status = 0

Job Id: 189.pbspro
    job_state = F
    Exit_status = 2
"""


def test_torque_qstat_f_whole_exit_status() -> None:
    got = torque.parse_statuses(
        QSTAT_F,
        "qstat: Unknown Job Id Error 190.host\nqstat: Unknown Job Id 191.host\n",
        [str(i) for i in range(179, 193)],
    )
    assert got["179"] == JobStatus(D, -1, "C")  # -1 is a failure, not success
    assert got["180"] == JobStatus(D, 127, "C")  # 127, not its first character
    assert got["181"] == JobStatus(E, None, "E")  # exiting: not a failure, not done yet
    assert got["182"].state is R and got["183"].state is Q
    assert got["184"].state is H and got["185"].state is S
    assert got["186"].exit_code == 143  # 256 + SIGTERM
    assert got["187"] == JobStatus(D, 143, "C")  # deleted before it ran
    assert got["188"].exit_code == 0
    assert got["189"] == JobStatus(D, 2, "F")  # PBS Pro
    assert got["190"] == got["191"] == JobStatus(D, None, "gone")
    assert "192" not in got


def test_torque_continuation_lines() -> None:
    jobs = torque.parse_qstat_f(QSTAT_F)
    assert jobs["179"]["Variable_List"].endswith("PBS_O_WORKDIR=/opt/moab,PBS_O_QUEUE=batchq")
    assert "Bad UID" in jobs["179"]["sched_hint"]
    assert jobs["179"]["Job Id"] == "179.host"


def test_torque_messages() -> None:
    assert torque.parse_submit("123.server.example.org\n") == "123"
    assert torque.parse_submit("124\n") == "124"
    with pytest.raises(DrmError):
        torque.parse_submit("qsub: submit error (Unknown queue MSG=cannot locate queue)\n")
    assert torque.numeric_id("77.srv") == "77"
    assert torque.exit_status_code("abc") is None
    assert torque.is_finished_job(
        "qdel: Request invalid for state of job MSG=invalid state for job - COMPLETE 5.srv"
    )


# --------------------------------------------------------------------------- HTCondor


def test_condor_submit_parse() -> None:
    out = "Submitting job(s).\n1 job(s) submitted to cluster 1234.\n"
    assert htcondor.parse_submit(out) == "1234"
    with pytest.raises(DrmError):
        htcondor.parse_submit("ERROR: Failed to connect to local queue manager\n")


def test_condor_q_autoformat() -> None:
    out = (
        "11 1 undefined undefined undefined\n"
        "12 2 undefined undefined undefined\n"
        "13 3 undefined undefined undefined\n"
        "14 4 0 false undefined\n"
        "15 5 undefined undefined undefined\n"
        "16 6 undefined undefined undefined\n"
        "17 7 undefined undefined undefined\n"
        "18 4 undefined true 9\n"
        "19 4 3 false undefined\n"
    )
    got = htcondor.parse_af(out)
    assert {k: v.state for k, v in got.items()} == {
        "11": Q, "12": R, "13": E, "14": D, "15": H, "16": E, "17": S, "18": D, "19": D,
    }  # fmt: skip
    assert got["14"].exit_code == 0
    assert got["18"].exit_code == 137
    assert got["19"].exit_code == 3


def test_condor_history() -> None:
    got = htcondor.parse_af(
        "21 4 3 false undefined\n22 3 undefined undefined undefined\n", finished=True
    )
    assert got["21"] == JobStatus(D, 3, "4")
    assert got["22"] == JobStatus(D, 143, "3")  # removed: killed, never success


def test_condor_messages() -> None:
    assert htcondor.is_unknown_job("Couldn't find/remove all jobs in cluster 999.")
    assert not htcondor.is_unknown_job("All jobs in cluster 12 have been marked for removal")


# --------------------------------------------------------------------------- LSF


def test_lsf_submit_parse() -> None:
    assert lsf.parse_submit("Job <1234> is submitted to default queue <normal>.\n") == "1234"
    assert lsf.parse_submit("Job <7> is submitted to queue <short>.\n") == "7"
    with pytest.raises(DrmError):
        lsf.parse_submit("normal: No such queue. Job not submitted.\n")


def test_lsf_bjobs_format_output() -> None:
    out = (
        "101 PEND -\n102 PSUSP -\n103 RUN -\n104 USUSP -\n105 SSUSP -\n106 DONE -\n"
        "107 EXIT 3\n108 EXIT 127\n109 EXIT -\n110 ZOMBI -\n111 UNKWN -\n112 WAIT -\n"
    )
    got = lsf.parse_bjobs(out)
    assert {k: v.state for k, v in got.items()} == {
        "101": Q, "102": H, "103": R, "104": S, "105": S, "106": D, "107": D, "108": D,
        "109": D, "110": E, "111": U, "112": Q,
    }  # fmt: skip
    assert got["106"].exit_code == 0
    assert got["107"].exit_code == 3 and got["108"].exit_code == 127
    assert got["109"].exit_code == 143  # EXIT without a code: never success


def test_lsf_classic_table_and_not_found() -> None:
    out = (
        "JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME\n"
        "111     user1   RUN   normal     hostA       hostB       myjob      Oct 22 09:22\n"
        "112     user1   PEND  normal     hostA                   myjob      Oct 22 09:23\n"
    )
    got = lsf.parse_bjobs(out)
    assert got["111"].state is R and got["112"].state is Q
    assert lsf.not_found_ids("Job <123> is not found\nJob <124> is not found\n") == {"123", "124"}
    assert lsf.is_unknown_job("Job <5>: Job has already finished")
    assert lsf.format_unsupported("bjobs: illegal option -- o\nUsage: bjobs [-h] ...")
