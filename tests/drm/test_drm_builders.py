"""Argv, directive and submit-description builders: each resource reaches the right flag."""

from __future__ import annotations

import pytest

from pbq.drm import htcondor, lsf, sge, slurm, torque
from pbq.drm.base import DrmError, Resources, render_job_script

FULL = Resources(cpu=4, mem="2G", vmem="6G", queue="long", walltime="1-02:03:04", pe="smp")
NONE = Resources()


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_slurm_submit_argv() -> None:
    argv = slurm.submit_argv(
        "/w/.pbq-drm/j.sh", job_name="pbq-j", log_file="/w/j.log", workspace="/w", resources=FULL
    )
    assert argv[:2] == ["sbatch", "--parsable"]
    assert flag(argv, "-J") == "pbq-j"
    assert flag(argv, "-o") == "/w/j.log"
    assert flag(argv, "-D") == "/w"
    assert flag(argv, "-c") == "4"
    assert "--mem=2048M" in argv
    assert flag(argv, "-t") == "1-02:03:04"
    assert flag(argv, "-p") == "long"
    assert argv[-1] == "/w/.pbq-drm/j.sh"
    assert not any("6G" in a or "6144" in a for a in argv)  # no vmem in Slurm
    pct = slurm.submit_argv(
        "s", job_name="n", log_file="/w/50%.log", workspace="/w", resources=NONE
    )
    assert flag(pct, "-o") == "/w/50%%.log"  # sbatch would expand %.
    bare = slurm.submit_argv("s", job_name="n", log_file="l", workspace="w", resources=NONE)
    assert flag(bare, "-c") == "1"
    assert "-t" not in bare and "-p" not in bare and not any(a.startswith("--mem") for a in bare)
    assert slurm.status_argv(["1", "2", "3"]) == [
        "squeue",
        "-h",
        "-t",
        "all",
        "-j",
        "1,2,3",
        "-o",
        "%i|%T|%r",
    ]
    assert slurm.job_argv("5") == ["scontrol", "-o", "show", "job", "5"]
    assert slurm.Slurm().action_argv("hold", "5") == ["scontrol", "hold", "5"]
    assert slurm.Slurm().action_argv("resume", "5") == ["scontrol", "resume", "5"]
    assert slurm.Slurm().action_argv("cancel", "5") == ["scancel", "5"]


def test_sge_submit_argv() -> None:
    argv = sge.submit_argv(
        "/w/j.sh", job_name="pbq-j", log_file="/w/j.log", workspace="/w", resources=FULL
    )
    assert argv[:2] == ["qsub", "-terse"]
    assert flag(argv, "-N") == "pbq-j"
    assert flag(argv, "-o") == "/w/j.log" and flag(argv, "-j") == "y"
    assert flag(argv, "-wd") == "/w"
    assert flag(argv, "-b") == "n" and flag(argv, "-S") == "/bin/sh"
    assert argv[argv.index("-pe") + 1 : argv.index("-pe") + 3] == ["smp", "4"]
    # h_vmem is per slot: 6G over 4 slots; mem -> mem_free; walltime in seconds.
    assert flag(argv, "-l") == f"h_vmem=1536M,mem_free=2048M,h_rt={86400 + 7384}"
    assert flag(argv, "-q") == "long"
    assert argv[-1] == "/w/j.sh"


def test_sge_cpu_without_pe_is_not_passed() -> None:
    r = Resources(cpu=4, vmem="4G")
    argv = sge.submit_argv("s", job_name="n", log_file="l", workspace="w", resources=r)
    assert "-pe" not in argv
    assert flag(argv, "-l") == "h_vmem=4096M"  # the whole limit for the one slot
    assert sge.cpu_dropped(r) and not sge.cpu_dropped(FULL) and not sge.cpu_dropped(NONE)
    bare = sge.submit_argv("s", job_name="n", log_file="l", workspace="w", resources=NONE)
    assert "-l" not in bare and "-q" not in bare and "-pe" not in bare
    assert sge.status_argv("alice") == ["qstat", "-u", "alice"]
    assert sge.Sge().action_argv("suspend", "3") == ["qmod", "-sj", "3"]
    assert sge.Sge().action_argv("resume", "3") == ["qmod", "-usj", "3"]
    assert sge.Sge().action_argv("hold", "3") == ["qhold", "3"]
    assert sge.Sge().action_argv("release", "3") == ["qrls", "3"]


def test_torque_directives_mem_and_vmem_each_from_their_own_value() -> None:
    lines = torque.directives(
        job_name="pbq-a-very-long-job-name", log_file="/w/j.log", resources=FULL
    )
    assert "#PBS -l nodes=1:ppn=4" in lines
    assert "#PBS -l mem=2048mb" in lines
    assert "#PBS -l vmem=6144mb" in lines  # BioQueue gave vmem the value of mem
    assert f"#PBS -l walltime={26}:03:04" in lines
    assert "#PBS -q long" in lines
    assert "#PBS -o /w/j.log" in lines and "#PBS -j oe" in lines
    assert "#PBS -N pbq-a-very-long" in lines  # 15 characters at most
    only_vmem = torque.directives(job_name="x", log_file="l", resources=Resources(vmem="1G"))
    assert "#PBS -l vmem=1024mb" in only_vmem
    assert not any("mem=" in line and "vmem" not in line for line in only_vmem)
    bare = torque.directives(job_name="x", log_file="l", resources=NONE)
    assert not any("walltime" in line or "mem" in line or "-q" in line for line in bare)
    assert torque.submit_argv("/w/j.sh") == ["qsub", "/w/j.sh"]
    assert torque.status_argv(["1", "2"]) == ["qstat", "-f", "1", "2"]
    assert torque.Torque().action_argv("suspend", "1") == ["qsig", "-s", "suspend", "1"]
    assert torque.Torque().action_argv("resume", "1") == ["qsig", "-s", "resume", "1"]


def test_torque_directives_come_first_in_the_script() -> None:
    lines = torque.directives(job_name="x", log_file="l", resources=FULL)
    script = render_job_script(
        "torquepbs", command="true", workspace="/w", exit_file="/w/e.exit", usage_file="/w/e.usage",
        job_name="x", directives=lines,
    )  # fmt: skip
    head = script.splitlines()
    assert head[0] == "#!/bin/sh"
    first_command = next(i for i, line in enumerate(head) if line and not line.startswith("#"))
    assert all(head.index(line) < first_command for line in lines)


@pytest.mark.parametrize(
    ("mem", "mb"),
    [("2G", 2048), ("512M", 512), ("1500K", 2), ("2048", 2048), ("1.5G", 1536), ("100b", 1)],
)
def test_condor_request_memory_in_megabytes(mem: str, mb: int) -> None:
    text = htcondor.submit_description(
        script="/w/j.sh", job_name="pbq-j", log_file="/w/j.log", workspace="/w",
        event_log="/w/j.condor.log", resources=Resources(cpu=3, mem=mem),
    )  # fmt: skip
    assert f"request_memory = {mb}\n" in text
    assert "request_cpus = 3\n" in text


def test_condor_submit_description() -> None:
    text = htcondor.submit_description(
        script="/w/j.sh", job_name="pbq-j", log_file="/w/j.log", workspace="/w",
        event_log="/w/e.log", resources=FULL,
    )  # fmt: skip
    lines = text.splitlines()
    assert "executable = /w/j.sh" in lines and "initialdir = /w" in lines
    assert "output = /w/j.log" in lines and "error = /w/j.log" in lines
    assert "log = /w/e.log" in lines and "should_transfer_files = NO" in lines
    assert any("periodic_remove" in line and f"> {93784}" in line for line in lines)
    assert lines[-1] == "queue 1"
    assert "6G" not in text and "long" not in text  # vmem and queue have no HTCondor meaning
    assert "periodic_remove" not in htcondor.submit_description(
        script="s", job_name="n", log_file="l", workspace="w", event_log="e", resources=NONE
    )
    with pytest.raises(DrmError):
        htcondor.submit_description(
            script="s",
            job_name="n",
            log_file="l",
            workspace="/w/$(x)",
            event_log="e",
            resources=NONE,
        )
    assert htcondor.status_argv(["1", "2"]) == [
        "condor_q", "1", "2",
        "-af", "ClusterId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal",
    ]  # fmt: skip
    assert htcondor.HTCondor().action_argv("resume", "4") == ["condor_continue", "4"]


def test_lsf_submit_argv() -> None:
    argv = lsf.submit_argv(
        "/w/j.sh", job_name="pbq-j", log_file="/w/j.log", workspace="/w", resources=FULL
    )
    assert argv[0] == "bsub"
    assert flag(argv, "-J") == "pbq-j"
    assert flag(argv, "-o") == "/w/j.log" and flag(argv, "-e") == "/w/j.log"
    assert flag(argv, "-cwd") == "/w"
    assert flag(argv, "-n") == "4"
    assert flag(argv, "-M") == str(2 * 1024 * 1024)  # KB
    assert flag(argv, "-v") == str(6 * 1024 * 1024)
    assert flag(argv, "-W") == "26:04"  # hours:minutes, rounded up
    assert flag(argv, "-q") == "long"
    assert argv[-2:] == ["/bin/sh", "/w/j.sh"]  # the script is the command: no shell, no stdin
    assert lsf.lsf_walltime(60) == "0:01" and lsf.lsf_walltime(61) == "0:02"
    bare = lsf.submit_argv("s", job_name="n", log_file="l", workspace="w", resources=NONE)
    assert "-M" not in bare and "-W" not in bare and "-q" not in bare
    assert lsf.status_argv(["1", "2"]) == [
        "bjobs",
        "-noheader",
        "-o",
        "jobid stat exit_code",
        "1",
        "2",
    ]
    system = lsf.Lsf()
    assert system.action_argv("hold", "1") == system.action_argv("suspend", "1") == ["bstop", "1"]
    assert system.action_argv("release", "1") == ["bresume", "1"]
    assert system.action_argv("resume", "1") == ["bresume", "1"]


def test_paths_the_drm_would_misread_are_refused() -> None:
    with pytest.raises(DrmError, match="Grid Engine cannot take the log file"):
        sge.submit_argv("s", job_name="n", log_file="/w/a:b.log", workspace="/w", resources=NONE)
    with pytest.raises(DrmError, match="Grid Engine cannot take the workspace"):
        sge.submit_argv("s", job_name="n", log_file="/w/l", workspace="/w/$HOME", resources=NONE)
    with pytest.raises(DrmError, match="LSF cannot take"):
        lsf.submit_argv("s", job_name="n", log_file="/w/%J.log", workspace="/w", resources=NONE)
    with pytest.raises(DrmError, match="Torque cannot take"):
        torque.directives(job_name="n", log_file="/w/a:b.log", resources=NONE)
    assert '#PBS -o "/w s/l.log"' in torque.directives(
        job_name="n", log_file="/w s/l.log", resources=NONE
    )
