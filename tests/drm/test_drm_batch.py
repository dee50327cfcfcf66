"""BatchDrm, the one class that runs DRM commands, through its runner seam: which commands run in
which order for statuses, exit codes, control and names, and how their failures are told apart.
The answers are the real tools' messages (see test_drm_parsers.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pbq.drm import ClusterState, CommandResult, CommandRunner, DrmError, DrmUnavailable
from pbq.drm.base import JobFiles, Resources
from pbq.drm.batch import BatchDrm
from pbq.drm.bioqueue import BioQueueFunctions
from pbq.drm.htcondor import HTCondor
from pbq.drm.lsf import Lsf
from pbq.drm.protocol import Drm, Submission
from pbq.drm.sge import Sge
from pbq.drm.slurm import Slurm
from pbq.drm.torque import Torque

Answer = tuple[int, str, str] | Exception


class ScriptedRunner(CommandRunner):
    """Answers each command with the first answer whose key its argv starts with."""

    def __init__(self, answers: dict[tuple[str, ...], Answer]) -> None:
        super().__init__()
        self.answers = answers
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], **_: object) -> CommandResult:  # type: ignore[override]
        self.calls.append(list(argv))
        for key, answer in self.answers.items():
            if tuple(argv[: len(key)]) == key:
                if isinstance(answer, Exception):
                    raise answer
                rc, out, err = answer
                return CommandResult(tuple(argv), rc, out, err)
        raise AssertionError(f"unexpected command {argv}")


def scripted(system: Callable[[CommandRunner], BatchDrm], **answers: Answer) -> BatchDrm:
    """SYSTEM with a scripted runner; keys are argv prefixes joined by spaces."""
    return system(ScriptedRunner({tuple(k.split()): v for k, v in answers.items()}))


def calls(drm: BatchDrm) -> list[str]:
    runner = drm.runner
    assert isinstance(runner, ScriptedRunner)
    return [" ".join(c) for c in runner.calls]


INVALID = "slurm_load_jobs error: Invalid job id specified"
DOWN = DrmUnavailable("sacct did not answer within 30 s")


def test_builtins_implement_the_protocol() -> None:
    for system in (Slurm, Sge, Torque, Lsf, HTCondor):
        assert isinstance(system(), Drm)


def test_slurm_asks_missing_ids_one_by_one() -> None:
    drm = scripted(Slurm, **{"squeue": (0, "7|RUNNING|None\n", ""), "scontrol -o show job 8": (
        1, "", INVALID)})  # fmt: skip
    states = drm.statuses(["7", "8"])
    assert states["7"].state is ClusterState.RUNNING
    assert states["8"].raw == "gone" and states["8"].exit_code is None
    assert calls(drm) == [
        "squeue -h -t all -j 7,8 -o %i|%T|%r",
        "scontrol -o show job 8",  # not sacct: a status poll asks only the first source
    ]


def test_slurm_status_failure_is_unavailable() -> None:
    drm = scripted(Slurm, squeue=(1, "", "slurm_load_jobs error: Unable to contact controller"))
    with pytest.raises(DrmUnavailable, match="Unable to contact"):
        drm.statuses(["7"])


def test_exit_code_later_sources_are_best_effort() -> None:
    drm = scripted(Slurm, **{"scontrol": (1, "", INVALID), "sacct": DOWN})
    assert drm.exit_code("9") is None
    assert calls(drm) == [
        "scontrol -o show job 9",
        "sacct -n -P -X -j 9 -o JobID,State,ExitCode",
    ]
    drm = scripted(Slurm, **{"scontrol": (0, "", ""), "sacct": (0, "9|FAILED|4:0\n", "")})
    assert drm.exit_code("9") is None  # scontrol answered (nothing useful): no sacct
    drm = scripted(Slurm, **{"scontrol": (1, "", INVALID), "sacct": (0, "9|FAILED|4:0\n", "")})
    assert drm.exit_code("9") == 4
    drm = scripted(Slurm, scontrol=DOWN)
    with pytest.raises(DrmUnavailable):
        drm.exit_code("9")  # the first source must answer


def test_condor_exit_code_from_the_queue_then_the_history() -> None:
    history = "5 4 2 false undefined\n"
    drm = scripted(HTCondor, condor_q=(0, "", ""), condor_history=(0, history, ""))
    assert drm.exit_code("5") == 2
    assert [c.split()[0] for c in calls(drm)] == ["condor_q", "condor_history"]
    drm = scripted(HTCondor, condor_q=(0, "5 2 undefined undefined undefined\n", ""))
    assert drm.exit_code("5") is None  # still running


def test_lsf_falls_back_to_the_classic_table() -> None:
    classic = (
        "JOBID USER STAT QUEUE FROM_HOST EXEC_HOST JOB_NAME SUBMIT_TIME\n3 u RUN normal h h j x\n"
    )
    drm = scripted(Lsf, **{"bjobs -noheader": (255, "", "bjobs: illegal option -- o\nUsage: bjobs"),
                           "bjobs -a": (0, classic, "")})  # fmt: skip
    assert drm.statuses(["3"])["3"].state is ClusterState.RUNNING
    assert calls(drm) == ["bjobs -noheader -o jobid stat exit_code 3", "bjobs -a 3"]


def test_control_failures_and_cancel_of_a_finished_job() -> None:
    drm = scripted(Torque, qdel=(153, "", "qdel: Unknown Job Id Error 4.server"),
                   qhold=(168, "", "qhold: Request invalid for state of job 4.server"))  # fmt: skip
    drm.cancel("4")
    with pytest.raises(DrmError, match="Request invalid"):
        drm.hold("4")
    sge = scripted(Sge, qmod=(0, 'Job "4" can not be suspended\n', ""))
    with pytest.raises(DrmError, match="can not"):
        sge.suspend("4")  # qmod exits 0 when it did nothing


def test_find_by_name() -> None:
    drm = scripted(Slurm, squeue=(0, "12\n14\n", ""))
    assert drm.find_by_name("pbq-a") == ["12", "14"]
    assert calls(drm) == ["squeue -h -t all -n pbq-a -o %i"]
    torque = scripted(Torque, qstat=(0, "Job Id:\t7\n\tJob_Name = pbq-a\n\tjob_state = R\n\n"
                                        "Job Id: 8.srv\n    Job_Name = other\n", ""))
    assert torque.find_by_name("pbq-a") == ["7"]  # Slurm's wrappers indent by a tab
    lsf = scripted(Lsf, bjobs=(255, "", "Job <pbq-a> is not found"))
    assert lsf.find_by_name("pbq-a") == []
    condor = scripted(HTCondor, condor_q=(0, "31\n", ""))
    assert condor.find_by_name("pbq-a") == ["31"]
    assert calls(condor) == ['condor_q -constraint JobBatchName == "pbq-a" -af ClusterId']
    sge = scripted(Sge, qstat=(0, "==\njob_number:                 44\nexec_file: x\n", ""))
    assert sge.find_by_name("pbq-a") == ["44"]


def submission(tmp_path: Path, **resources: object) -> Submission:
    files = JobFiles.new(tmp_path, "k")
    files.dir.mkdir(parents=True, exist_ok=True)
    return Submission("true", "k", tmp_path, tmp_path / "k.log", files, Resources(**resources))  # type: ignore[arg-type]


def test_submit_refused_and_sge_note(tmp_path: Path) -> None:
    drm = scripted(Sge, qsub=(1, "", "Unable to run job: unknown queue"))
    job = submission(tmp_path, cpu=4)
    with pytest.raises(DrmError, match="sge did not accept job k: .*unknown queue"):
        drm.submit(job)
    assert "cpu=4 not requested" in job.files.script.read_text()
    condor = scripted(HTCondor, condor_submit=(0, "1 job(s) submitted to cluster 31.\n", ""))
    assert condor.submit(submission(tmp_path / "c", cpu=2)) == "31"
    (sub,) = (tmp_path / "c" / ".pbq-drm").glob("*.sub")
    assert "request_cpus = 2" in sub.read_text()


def test_bioqueue_functions_over_a_typed_drm(tmp_path: Path) -> None:
    drm = scripted(Slurm, sbatch=(0, "21\n", ""), squeue=(0, "21|PENDING|Priority\n", ""))
    functions = BioQueueFunctions(drm)
    assert functions.submit_job("true", 3, 0, workspace=str(tmp_path)) == 21
    assert functions.query_job_status(21) == 2
    assert functions.submit_job("true", 3, 1, wall_time="forever") == 0
    assert "bad walltime" in functions.last_error
    drm.runner.answers = {("squeue",): DOWN}  # type: ignore[attr-defined]
    assert functions.query_job_status(21) == -1


UNITS = {
    # DRM: (what mem=1024 becomes, what mem=2G becomes, what walltime=90m becomes)
    Slurm: ("--mem=1024M", "--mem=2048M", "-t 0-01:30:00"),
    Torque: ("mem=1024mb", "mem=2048mb", "walltime=01:30:00"),
    Sge: ("mem_free=1024M", "mem_free=2048M", "h_rt=5400"),
    HTCondor: ("request_memory = 1024", "request_memory = 2048", "> 5400)"),
    Lsf: ("-M 1048576", "-M 2097152", "-W 1:30"),
}


@pytest.mark.parametrize("drm", list(UNITS), ids=lambda d: d.name)
def test_units_per_drm(tmp_path: Path, drm: type[BatchDrm]) -> None:
    def text(**resources: object) -> str:
        job = submission(tmp_path, **resources)
        parts = [*drm().directives(job), *drm().submit_argv(job)]
        parts += drm().submit_files(job).values()
        return " ".join(parts)

    mem_mb, mem_2g, wall = UNITS[drm]
    assert mem_mb in text(mem="1024")  # a bare number is megabytes
    assert mem_2g in text(mem="2G")
    assert wall in text(walltime="90m")


def test_units_for_bioqueue_plugins() -> None:
    from pbq.drm.bioqueue import bioqueue_resources

    assert bioqueue_resources(Resources(mem="1024", walltime="90m")) == (1, "1G", "", "01:30:00")
    assert bioqueue_resources(Resources(mem="2G", vmem="1536")) == (1, "2G", "1536M", "")
