"""The one base class of the built-in batch systems; the only DRM code that runs commands.

A system (``slurm.py`` ...) is a subclass made of pure pieces: the argv of each command, and
the parser of its answer. Queries are ``(argv, parser)`` pairs, so that what to run and how to
read it stay pure; :class:`BatchDrm` runs them through :attr:`BatchDrm.runner` (argv lists,
timeouts), which tests can replace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, TypeVar

from pbq.drm.base import (
    GONE,
    ClusterState,
    CommandResult,
    CommandRunner,
    DrmError,
    DrmUnavailable,
    JobStatus,
    Resources,
    render_job_script,
    write_script,
)
from pbq.drm.protocol import Action, Actions, Capability, Submission

log = logging.getLogger("pbq.drm")

T = TypeVar("T")
#: a command and the reader of its answer.
Query = tuple[list[str], Callable[[CommandResult], T]]
#: the forms of a status query (see :meth:`BatchDrm.status_queries`).
StatusQueries = list[Query[dict[str, JobStatus] | None]]
#: what the commands print when their server cannot be reached or did not answer in time.
DOWN_RE = re.compile(
    r"cannot connect|connection refused|unable to contact|socket timed out|timed? ?out|"
    r"not responding|failed to connect|failed to fetch ads|LSF is down|unreachable",
    re.IGNORECASE,
)
#: directive lines starting with this are notes for the user, logged at submission.
NOTE = "# pbq: "


class BatchDrm(Actions):
    """Submit, status, exit code and control of one batch system (implements
    :class:`~pbq.drm.protocol.Drm`). Subclasses set :attr:`name` and :attr:`actions` and
    implement :meth:`options_argv` (or :meth:`submit_argv`), :meth:`parse_submit` and
    :meth:`status_queries`."""

    name: ClassVar[str]
    capabilities: frozenset[Capability] = frozenset(
        {"hold", "suspend", "exit_code", "batch_status"}
    )
    #: argv of each control action, before the cluster id.
    actions: ClassVar[Mapping[Action, Sequence[str]]]
    #: ids that the status listing leaves out are asked one by one (first :meth:`job_queries`).
    ask_missing: ClassVar[bool] = False

    def __init__(self, runner: CommandRunner | None = None) -> None:
        self.runner = runner or CommandRunner()

    # ------------------------------------------------------------------ pure, per system

    def directives(self, job: Submission) -> list[str]:
        """Lines put at the top of the job script (``#PBS ...``)."""
        return []

    def submit_files(self, job: Submission) -> dict[str, str]:
        """Files the submit command reads, besides the job script: {path: text}."""
        return {}

    def options_argv(
        self, script: str, *, job_name: str, log_file: str, workspace: str, resources: Resources
    ) -> list[str]:
        """The submit command of a system that takes every option on its command line."""
        raise NotImplementedError

    def submit_argv(self, job: Submission) -> list[str]:
        return self.options_argv(
            str(job.files.script),
            job_name=job.job_name,
            log_file=str(job.log_file),
            workspace=str(job.workspace),
            resources=job.resources,
        )

    def parse_submit(self, stdout: str) -> str:
        """The cluster id in the submit command's output (DrmError when there is none)."""
        raise NotImplementedError

    def status_queries(self, cluster_ids: Sequence[str]) -> StatusQueries:
        """Forms of the one status query, tried in order while a parser answers None (this
        form not understood here). A parser raises DrmUnavailable when the DRM did not answer;
        ids missing from its answer have left the queue."""
        raise NotImplementedError

    def job_queries(self, cluster_id: str) -> list[Query[JobStatus | None]]:
        """Queries about one job, for its exit code: the first answer that is not None wins.
        The first must answer; the later ones (accounting, history) are best effort. Without
        any, the status query is asked."""
        return []

    def name_query(self, job_name: str) -> Query[list[str]] | None:
        """The query listing the ids of jobs named JOB_NAME; None when the DRM has none."""
        return None

    def action_argv(self, action: Action, cluster_id: str) -> list[str]:
        if action not in self.actions:
            raise DrmError(f"{self.name} cannot {action} jobs")
        return [*self.actions[action], str(cluster_id)]

    def is_down(self, output: str) -> bool:
        """Does a command's output say the DRM could not be reached (or timed out)?"""
        return bool(DOWN_RE.search(output))

    def is_gone(self, output: str) -> bool:
        """Does a control command's output say the job has left the queue?"""
        return False

    def action_ok(self, action: Action, result: CommandResult) -> bool:
        """Did ACTION work? (Cancel of a job that has left the queue did.)"""
        return result.ok or (action == "cancel" and self.is_gone(result.output))

    # ------------------------------------------------------------------ running them

    def run(self, argv: Sequence[str]) -> CommandResult:
        return self.runner.run(argv)

    def submit(self, job: Submission) -> str:
        directives = self.directives(job)
        for line in directives:
            if line.startswith(NOTE):
                log.warning("%s: %s", self.name, line.removeprefix(NOTE))
        script = render_job_script(
            self.name,
            command=job.command,
            workspace=job.workspace,
            exit_file=job.files.exit_file,
            usage_file=job.files.usage_file,
            job_name=job.job_name,
            directives=directives,
            claim_file=job.files.claim_file,
            dup_file=job.files.dup_file,
        )
        try:
            # (no stale exit-code file to remove: the files are the attempt's own; a second
            # submission of the same attempt must not erase what the first one wrote)
            write_script(job.files.script, script)
            for path, text in self.submit_files(job).items():
                with open(path, "w", encoding="utf-8") as file:
                    file.write(text)
        except OSError as exc:
            raise DrmError(f"cannot write the files of job {job.job_key}: {exc}") from exc
        result = self.run(self.submit_argv(job))
        if not result.ok:
            message = f"{self.name} did not accept job {job.job_key}: {result.describe()}"
            if self.is_down(result.output):  # it may have taken the job all the same
                raise DrmUnavailable(message)
            raise DrmError(message)
        return self.parse_submit(result.stdout)

    def statuses(self, cluster_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = [str(i) for i in cluster_ids]
        if not ids:
            return {}
        found: dict[str, JobStatus] | None = None
        for argv, parse in self.status_queries(ids):
            found = parse(self.run(argv))
            if found is not None:
                break
        if found is None:
            raise DrmUnavailable(f"{self.name}: no form of the status query was understood")
        result: dict[str, JobStatus] = {}
        for i in ids:
            status = found.get(i)
            if status is None and self.ask_missing:
                status = self._ask_job(i, first_only=True)
            result[i] = status or GONE
        return result

    def _ask_job(self, cluster_id: str, first_only: bool = False) -> JobStatus | None:
        queries = self.job_queries(cluster_id)
        for n, (argv, parse) in enumerate(queries[:1] if first_only else queries):
            try:
                status = parse(self.run(argv))
            except DrmUnavailable:
                if n == 0:
                    raise
                return None
            if status is not None:
                return status
        return None

    def exit_code(self, cluster_id: str) -> int | None:
        cluster_id = str(cluster_id)
        if self.job_queries(cluster_id):
            status = self._ask_job(cluster_id)
        else:
            status = self.statuses([cluster_id])[cluster_id]
        if status is None or status.state is not ClusterState.DONE:
            return None
        return status.exit_code

    def find_by_name(self, job_name: str) -> list[str] | None:
        query = self.name_query(job_name)
        if query is None:
            return None
        argv, parse = query
        return parse(self.run(argv))

    def act(self, action: Action, cluster_id: str) -> None:
        result = self.run(self.action_argv(action, cluster_id))
        if not self.action_ok(action, result):
            raise DrmError(result.describe())


def listed_ids(
    result: CommandResult, name: str, gone: Callable[[str], bool], pattern: str = r"^\s*(\d+)"
) -> list[str]:
    """The job ids a name query listed (first group of PATTERN per line); [] when the command
    says there is no such job; DrmUnavailable when it failed otherwise."""
    unavailable_unless(result, name, gone)
    if not result.ok:
        return []
    return list(dict.fromkeys(re.findall(pattern, result.stdout, re.MULTILINE)))


def unavailable_unless(result: CommandResult, name: str, gone: Callable[[str], bool]) -> None:
    """Raise DrmUnavailable for a failed query whose output does not just say "unknown job"."""
    if not result.ok and not gone(result.output):
        raise DrmUnavailable(f"{name}: {result.describe()}")
