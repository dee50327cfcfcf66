"""Jobs on a cluster head node: submitted to the resource manager, not forked here.

The hostfile line names the DRM (``headnode linux 50 50 0 drm=slurm queue=debug mem=2G``);
``max``/``wday`` then mean "jobs of ours queued or running in the DRM at once".  The loop,
files and control commands stay the same; this executor supplies what differs:

* start = submit (resources from ``[cluster]`` overridden by the hostfile's fields, memory
  from earlier runs when ``predict = true``), recording the cluster id;
* ended = one status query for all of our jobs every ``poll_interval`` seconds, with
  back-off while the DRM does not answer (nothing is judged then, so an outage neither
  loses nor duplicates a job); exit codes from the exit-code file the job script writes;
* stop/cont = hold queued jobs and suspend running ones where the DRM can, and undo it;
  term = cancel; kill leaves them in the DRM and a restarted scheduler re-attaches by the
  recorded cluster ids (or, for a job whose id was never recorded, by the ticket the
  submission left in the workspace).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..drm.backend import DrmBackend
from ..drm.base import (
    ODD,
    ClusterState,
    DrmError,
    DrmUnavailable,
    JobFiles,
    JobStatus,
    PluginFailed,
    Resources,
    read_exit_file,
    safe_name,
)
from ..drm.bioqueue import is_cluster_id
from ..errors import PbqError
from ..hostfile import Host
from ..statefiles import line_to_text
from .executor import Answer, Ended, EnvFor, NotStarted, Started
from .jobs import UNKNOWN_EXIT, Job, Outcome
from .ledger import Log
from .recovery import Probe

RESOURCE_KEYS = ("cpu", "mem", "vmem", "queue", "walltime", "pe")
REFUSED_EXIT = 126  # joblog Exitval of a line the DRM refused submit_tries times
CLAIMED = "claim:"  # id of a job known only by its claim marker (judged by its exit-code file)


@dataclass
class Attempt:
    """One attempt of a line while its submission is refused or unclear."""

    name: str
    refusals: int = 0
    ambiguous: bool = False  # a failure after which a cluster job of it may exist
    in_use: int | None = None  # seq of the job submitting it now


def claim_owner(path: Path) -> str | None:
    """Who claimed an attempt (the cluster id its job script saw, else "?"); None: nobody."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    return text[0] if text else "?"


def resources_for(host: Host, cfg: Config, predicted_mem: str | None = None) -> Resources:
    layers: dict[str, object] = {}
    for key in ("cpu", "mem", "vmem", "queue", "walltime"):
        value = getattr(cfg.cluster, key, "")
        if value not in ("", None):
            layers[key] = value
    for key in RESOURCE_KEYS:
        if key in host.fields:
            layers[key] = host.fields[key]
    if predicted_mem:
        layers["mem"] = predicted_mem
    try:
        return Resources(**layers)  # type: ignore[arg-type]
    except TypeError as err:
        raise PbqError(f"bad cluster resources for host {host.name}: {err}") from None


class DrmExecutor:
    counts_foreign_load = False
    queues_ahead = False

    @property
    def drm_name(self) -> str:
        return self.name

    def running_for_real(self) -> None:
        pass

    def __init__(self, host_name: str, host: Host, cfg: Config, workspace: Path, log_dir: Path,
                 log: Log, usage_path: Path, mono: Callable[[], float] = time.monotonic) -> None:
        self.host_name = host_name
        self.backend = DrmBackend.load(host.drm or "", cfg.cluster.plugin_dir or None)
        self.name = self.backend.name
        self.host = host
        self.cfg = cfg
        self.workspace = workspace
        self.log_dir = log_dir
        self.log = log
        self.usage_path = usage_path
        self.mono = mono
        self.poll_interval = cfg.cluster.poll_interval
        self.next_poll = 0.0
        self.unavailable_since: float | None = None
        self.cluster_state: dict[int, str] = {}  # seq -> last state the DRM reported
        self.attempts: dict[bytes, list[Attempt]] = {}  # line -> its refused or unclear attempts
        self.orphans: list[tuple[str, str]] = []  # (attempt, job id): failed, a job may start
        self.error_polls: dict[int, int] = {}  # seq -> polls in a row with an ERROR status
        self.submit_tries = int(getattr(cfg.cluster, "submit_tries", 3))
        self.error_limit = int(getattr(cfg.cluster, "error_polls", 3))
        self.last_submit_ok = -math.inf
        self.hold_starts_until = -math.inf
        self.forget_ids: list[str] = []
        # validate the resources once, at start-up: a typo is an error now, not per job
        self.base_resources = resources_for(host, cfg)

    def fileno(self) -> int | None:
        return None

    def has_news(self) -> bool:
        return False

    def ends_in_flight(self) -> int:
        return 0  # nothing is started ahead: every start is a submission the loop made

    def accepting(self, mono: float) -> bool:
        return mono >= self.hold_starts_until

    # -- submit ----------------------------------------------------------------------

    def start(self, jobs: list[Job], env_for: EnvFor, now: float,
              wait: bool = True, ahead: bool = False) -> list[Answer]:
        assert not ahead, "a resource manager queues jobs itself"
        out: list[Answer] = [self._submit(job, env_for(job)["PBQ_JOB_ID"]) for job in jobs]
        self._log_printed()
        return out  # a submission is answered at once

    def revoke(self) -> None:
        pass  # nothing is asked for ahead

    def start_queued(self, n: int) -> None:
        pass

    @property
    def revoking(self) -> bool:
        return False

    def start_answers(self) -> list[Answer]:
        return []

    def _log_printed(self) -> None:
        for said in self.backend.drain_printed():
            self.log(said)

    def attempt_name(self, job: Job) -> str:
        """The name of this attempt of the job: unique to the jobfile, the job number and the
        attempt (a digest of them first, so that a DRM that cuts names keeps it unique)."""
        usage = self.usage_path
        jobfile = str(usage.with_suffix("") if usage.suffix else usage)
        key = f"{jobfile}\0{self.host_name}\0{job.seq}\0{job.tries + 1}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        return f"pbq-{digest}-{safe_name(self.host_name, 20)}.{job.seq}.{job.tries + 1}"

    def _attempt_for(self, job: Job) -> Attempt:
        """The line's pending attempt (one refused or unclear before), else a new one."""
        for attempt in self.attempts.get(job.line, []):
            if attempt.in_use is None:
                attempt.in_use = job.seq
                return attempt
        attempt = Attempt(self.attempt_name(job), in_use=job.seq)
        self.attempts.setdefault(job.line, []).append(attempt)
        return attempt

    def _drop_attempt(self, job: Job, attempt: Attempt) -> None:
        pending = self.attempts.get(job.line, [])
        if attempt in pending:
            pending.remove(attempt)
        if not pending:
            self.attempts.pop(job.line, None)

    def _existing(self, attempt: Attempt, jid: str, log_file: Path) -> tuple[str, str] | None:
        """A cluster job of ATTEMPT that exists already: (cluster id, how it was found)."""
        files = self.backend.files_for(self.workspace, attempt.name)
        claim = claim_owner(files.claim_file)
        if claim is not None:
            cid = claim if is_cluster_id(claim) else f"{CLAIMED}{attempt.name}"
            self.backend.attach(self.workspace, cid, jid, attempt.name, log_file)
            return cid, "found running by its claim marker"
        if not attempt.ambiguous:
            return None
        try:
            ids = self.backend.find_attempt(attempt.name)
        except PbqError as err:
            self.log(f"{self.name}: cannot look up {attempt.name} ({err})")
            return None
        if not ids:
            return None
        self.backend.attach(self.workspace, ids[0], jid, attempt.name, log_file)
        more = f" (also {', '.join(ids[1:])})" if len(ids) > 1 else ""
        return ids[0], f"re-attached by its name {attempt.name}{more}"

    def _submit(self, job: Job, jid: str) -> Started | NotStarted:
        """Refused submit_tries times, a line is a failed job; a DRM that does not answer puts
        it back. An attempt that may have reached the DRM is looked up before it is submitted
        again; and whatever happens, only one cluster job of an attempt runs the command."""
        from ..predict import ResourceStore, command_key, format_mem

        attempt = self._attempt_for(job)
        log_file = self.log_dir / f"{jid}.log"
        if attempt.refusals or attempt.ambiguous:
            found = self._existing(attempt, jid, log_file)
            if found is not None:
                self._drop_attempt(job, attempt)
                self.cluster_state[job.seq] = "queued"
                return Started(job, cluster_id=found[0], note=f"as {self.name} job {found[0]}, "
                                                               f"{found[1]}")
        predicted = None
        if self.cfg.cluster.predict:
            peak = ResourceStore(self.usage_path).predict_mem(command_key(line_to_text(job.line)))
            predicted = format_mem(peak) if peak else None
        try:
            res = resources_for(self.host, self.cfg, predicted)
            cid = self.backend.submit(line_to_text(job.line), jid, self.workspace, log_file, res,
                                      name=attempt.name)
        except DrmUnavailable as err:
            # Down, or timed out after it may have taken the job: look it up before the next try.
            attempt.in_use = None
            attempt.ambiguous = True
            mono = self.mono()
            wait = max(self.poll_interval, self.backend.backoff(base=self.poll_interval))
            self.hold_starts_until = mono + wait
            return NotStarted(job, None, f"{self.name} did not answer ({err}); retrying in "
                                         f"{wait:g} s")
        except DrmError as err:
            attempt.in_use = None
            attempt.refusals += 1
            attempt.ambiguous = attempt.ambiguous or isinstance(err, PluginFailed)
            self.hold_starts_until = self.mono() + self.poll_interval
            tries = self.submit_tries
            if attempt.refusals >= tries:
                self._drop_attempt(job, attempt)
                if attempt.ambiguous:
                    self.orphans.append((attempt.name, jid))
                why = f"{self.name} refused it {attempt.refusals} times; last: {err}"
                return NotStarted(job, Outcome(REFUSED_EXIT, note=why), why)
            return NotStarted(job, None, f"{self.name} refused it ({attempt.refusals} of {tries}: "
                                         f"{err}); trying again in {self.poll_interval:g} s")
        except PbqError as err:
            self._drop_attempt(job, attempt)
            return NotStarted(job, Outcome(REFUSED_EXIT, note=str(err)), str(err))
        self._drop_attempt(job, attempt)
        self.last_submit_ok = self.mono()
        self.cluster_state[job.seq] = "queued"
        mem = f", mem {predicted} predicted" if predicted else ""
        return Started(job, cluster_id=cid, note=f"as {self.name} job {cid}{mem}")

    def find_submitted(self, job_id: str) -> str | None:
        """The cluster id of a job submitted just before a crash, from its ticket."""
        try:
            tickets = list((self.workspace / ".pbq-drm").glob("job-*.json"))
        except OSError:
            return None
        for path in tickets:
            try:
                t = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(t, dict) and t.get("job_key") == job_id and t.get("drm") == self.name:
                return str(t.get("cluster_id"))
        return None

    # -- ends ------------------------------------------------------------------------

    def events(self, now: float) -> list[Ended]:
        return []

    def usage(self) -> list[tuple[Job, float, int]]:
        return []

    def settle(self, timeout: float = 1.0) -> None:
        pass

    def recorded(self, ended: list[Ended]) -> None:
        # Their files go at the next poll: by then the ends are in a snapshot too.
        self.forget_ids += [str(e.job.cluster_id) for e in ended if e.job.cluster_id]

    def poll(self, live: list[Job], now: float, mono: float) -> list[Ended]:
        """One status query for all of our jobs; the ones that ended, with their exit codes.

        A job whose exit-code file exists has ended, whatever its status reads. An ERROR
        status (negative, odd value, an exception for that job) is a verdict only after
        ``error_polls`` polls in a row; an odd value for a job pbq held means "held"."""
        # One pass on purpose: exit-code files first, then one status query, then the verdicts.
        if mono < self.next_poll:
            return []
        for cid in self.forget_ids:  # the scripts, exit-code files and tickets of recorded jobs
            with contextlib.suppress(OSError, PbqError):
                self.backend.forget(cid, self.workspace)
        self.forget_ids = []
        self._watch_orphans()
        jobs = [j for j in live if j.cluster_id]
        self.next_poll = mono + self.poll_interval
        if not jobs:
            return []
        ended: list[Ended] = []
        judged: set[int] = set()
        for job in jobs:  # the exit-code file wins over any status
            if self._exit_file_code(str(job.cluster_id)) is not None:
                outcome = self._outcome(job, JobStatus(ClusterState.DONE, None, "exit file"))
                if outcome is not None:
                    ended.append(Ended(job, outcome, now))
                    judged.add(job.seq)
        asked = [j for j in jobs
                 if j.seq not in judged and not str(j.cluster_id).startswith(CLAIMED)]
        try:
            statuses = self.backend.statuses([str(j.cluster_id) for j in asked]) if asked else {}
        except DrmUnavailable as err:
            wait = self.backend.backoff(base=self.poll_interval, cap=300.0)
            self.next_poll = mono + max(wait, self.poll_interval)
            if self.unavailable_since is None:
                self.unavailable_since = time.time()
            again = self.next_poll - mono
            self.log(f"{self.name} does not answer ({err}); asking again in {again:.0f} s")
            self._log_printed()
            return self._settle(ended)
        self._log_printed()
        if self.unavailable_since is not None:
            self.log(f"{self.name} answers again")
            self.unavailable_since = None
        for job in asked:
            st: JobStatus | None = statuses.get(str(job.cluster_id))
            if st is None:
                continue
            if st.state is ClusterState.ERROR:
                if job.held and st.raw.startswith(ODD):
                    self.error_polls.pop(job.seq, None)  # a held job, as the plugin shows one
                    continue
                n = self.error_polls.get(job.seq, 0) + 1
                self.error_polls[job.seq] = n
                if n == 1:
                    self.log(f"{self.name} job {job.cluster_id}: {st.raw}; judged only if it lasts "
                             f"{self.error_limit} polls")
                if n < self.error_limit:
                    continue
                st = JobStatus(ClusterState.DONE, None, st.raw)
            else:
                self.error_polls.pop(job.seq, None)
            self.cluster_state[job.seq] = st.state.value
            if st.state is not ClusterState.DONE:
                continue  # queued, held, running, suspended, exiting: not done yet
            outcome = self._outcome(job, st)
            if outcome is not None:
                ended.append(Ended(job, outcome, now))
        return self._settle(ended)

    def _settle(self, ended: list[Ended]) -> list[Ended]:
        for e in ended:
            self.cluster_state.pop(e.job.seq, None)
            self.error_polls.pop(e.job.seq, None)
        return ended

    def _exit_file_code(self, cid: str) -> int | None:
        ticket = self.backend.ticket(cid, self.workspace)
        exit_file = ticket.get("exit_file") if ticket else None
        return read_exit_file(Path(exit_file)) if isinstance(exit_file, str) else None

    def _watch_orphans(self) -> None:
        """Attempts that failed after the plugin raised: say so if one starts after all."""
        for name, jid in list(self.orphans):
            files = self.backend.files_for(self.workspace, name)
            owner = claim_owner(files.claim_file)
            if owner is not None:
                self.orphans.remove((name, jid))
                self.log(f"job {jid}: a cluster job ({owner}) of attempt {name} started after the "
                         f"submission was judged refused; its line is in .error, the command runs "
                         f"there once (exit code in {files.exit_file})")

    def _outcome(self, job: Job, st: JobStatus) -> Outcome | None:
        cid = str(job.cluster_id)
        try:
            code = self.backend.exit_code(cid, self.workspace, st.exit_code)
        except DrmUnavailable:
            return None  # judge it at the next poll
        try:
            usage = self.backend.usage(cid, self.workspace)
        except Exception:  # noqa: BLE001 - usage is optional information
            usage = None
        maxrss = int(usage.peak_rss_bytes or 0) if usage is not None else 0
        cpu = float(usage.cpu_seconds or 0.0) if usage is not None else 0.0
        dups = self._duplicates(cid)
        if dups:
            self.log(f"{self.name} job {cid}: {dups} more cluster job(s) of its attempt "
                     "started and exited without running the command")
        if code is None:
            why = f"{self.name} job {cid} left the queue with no exit status"
            return Outcome(UNKNOWN_EXIT, 0, cpu, maxrss, why)
        return Outcome(code, 0, cpu, maxrss, f"{self.name} job {cid}")

    def _duplicates(self, cid: str) -> int:
        ticket = self.backend.ticket(cid, self.workspace)
        exit_file = ticket.get("exit_file") if ticket else None
        if not isinstance(exit_file, str):
            return 0
        try:
            text = JobFiles.from_exit_file(exit_file).dup_file.read_text()
        except (OSError, PbqError):
            return 0
        return len(text.splitlines())

    # -- control ---------------------------------------------------------------------

    def stop(self, job: Job) -> str | None:
        if not job.cluster_id:
            return None
        running = [job.cluster_id] if self.cluster_state.get(job.seq) == "running" else []
        try:
            said, stopped = self.backend.stop_jobs([job.cluster_id], running)
            if stopped:
                job.held = True  # saved with the job: cont releases it, also after a restart
        except DrmError as err:
            said = f"could not stop: {err}"
        return f"{self.name} job {job.cluster_id}: {said}"

    def cont(self, job: Job) -> str | None:
        if not job.cluster_id:
            return None
        try:
            said = self.backend.cont([job.cluster_id], [job.cluster_id] if job.held else [])
            if "could not" not in said:
                job.held = False
        except DrmError as err:
            said = f"could not continue: {err}"
        return f"{self.name} job {job.cluster_id}: {said}"

    def term(self, job: Job) -> None:
        self.kill(job)  # a DRM's cancel is its own TERM-then-KILL

    def kill(self, job: Job) -> bool:
        if job.cluster_id:
            try:
                self.backend.cancel([job.cluster_id])
                return True
            except (DrmError, PbqError):
                return False
        return False

    def terminate(self, jobs: list[Job]) -> str:
        ids = [str(j.cluster_id) for j in jobs if j.cluster_id]
        if not ids:
            return "nothing to cancel"
        try:
            self.backend.cancel(ids)  # `term` cancels all of ours in the DRM
            return f"cancelled {len(ids)} {self.name} job(s)"
        except PbqError as err:
            return f"could not cancel every {self.name} job: {err}"

    def term_finished(self, jobs: list[Job], hard: bool) -> bool:
        return True  # cancelled in the DRM: their lines go back when the host restarts

    def own_cpu_seconds(self, live: list[Job]) -> float:
        return 0.0

    def stopped_by_others(self, running: list[Job]) -> list[Job]:
        return []  # the DRM's holds are its own business

    def probe(self, jobs: list[Job]) -> dict[int, Probe]:
        out = {}
        for job in jobs:
            if job.cluster_id is None and job.op:
                cid = self.find_submitted(f"{self.host_name}.{job.seq}")
                if cid is not None:
                    out[job.seq] = Probe(alive=True, cluster_id=cid)
        return out

    def adopt(self, jobs: list[Job]) -> None:
        pass

    def close(self) -> None:
        pass
