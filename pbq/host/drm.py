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

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..drm.backend import DrmBackend
from ..drm.base import ClusterState, DrmError, DrmUnavailable, JobStatus, Resources
from ..errors import PbqError
from ..hostfile import Host
from ..statefiles import line_to_text
from .executor import Ended, EnvFor, NotStarted, Started
from .jobs import UNKNOWN_EXIT, Job, Outcome
from .ledger import Log
from .recovery import Probe

RESOURCE_KEYS = ("cpu", "mem", "vmem", "queue", "walltime", "pe")
SUBMIT_TRIES = 3  # a line the DRM refuses this many times in a row is a failed job


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
        self.submit_failures: dict[bytes, tuple[int, float]] = {}  # line -> (tries, first failure)
        self.last_submit_ok = -math.inf
        self.hold_starts_until = -math.inf
        self.forget_ids: list[str] = []
        # validate the resources once, at start-up: a typo is an error now, not per job
        self.base_resources = resources_for(host, cfg)

    def fileno(self) -> int | None:
        return None

    def has_news(self) -> bool:
        return False

    def accepting(self, mono: float) -> bool:
        return mono >= self.hold_starts_until

    # -- submit ----------------------------------------------------------------------

    def start(self, jobs: list[Job], env_for: EnvFor, now: float) -> list[Started | NotStarted]:
        return [self._submit(job, env_for(job)["PBQ_JOB_ID"]) for job in jobs]

    def _submit(self, job: Job, jid: str) -> Started | NotStarted:
        """A refusal is a failed job; a DRM that does not answer puts the line back."""
        from ..predict import ResourceStore, command_key, format_mem

        predicted = None
        if self.cfg.cluster.predict:
            peak = ResourceStore(self.usage_path).predict_mem(command_key(line_to_text(job.line)))
            predicted = format_mem(peak) if peak else None
        try:
            res = resources_for(self.host, self.cfg, predicted)
            cid = self.backend.submit(line_to_text(job.line), jid, self.workspace,
                                      self.log_dir / f"{jid}.log", res)
        except DrmError as err:
            # The DRM may be down (or refuse this one job): put the line back and wait a
            # poll interval; only a line refused SUBMIT_TRIES times in a row is a failed job.
            mono = self.mono()
            tries, first = self.submit_failures.get(job.line, (0, mono))
            self.submit_failures[job.line] = (tries + 1, first)
            self.hold_starts_until = mono + self.poll_interval
            # Refused, not down: other submissions went through since this line first failed.
            refused = self.last_submit_ok > first and not isinstance(err, DrmUnavailable)
            if tries + 1 >= SUBMIT_TRIES and refused:
                del self.submit_failures[job.line]
                return NotStarted(job, Outcome(126, note=str(err)), str(err))
            return NotStarted(job, None, f"{self.name} did not take it ({err}); retrying in "
                                         f"{self.poll_interval:g} s")
        except PbqError as err:
            return NotStarted(job, Outcome(126, note=str(err)), str(err))
        self.submit_failures.pop(job.line, None)
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
        """One status query for all of our jobs; the ones that ended, with their exit codes."""
        if mono < self.next_poll:
            return []
        for cid in self.forget_ids:  # the scripts, exit-code files and tickets of recorded jobs
            try:
                self.backend.forget(cid, self.workspace)
            except (OSError, PbqError):
                pass
        self.forget_ids = []
        jobs = [j for j in live if j.cluster_id]
        self.next_poll = mono + self.poll_interval
        if not jobs:
            return []
        try:
            statuses = self.backend.statuses([str(j.cluster_id) for j in jobs])
        except DrmUnavailable as err:
            wait = self.backend.backoff(base=self.poll_interval, cap=300.0)
            self.next_poll = mono + max(wait, self.poll_interval)
            if self.unavailable_since is None:
                self.unavailable_since = time.time()
            self.log(f"{self.name} does not answer ({err}); asking again in {self.next_poll - mono:.0f} s")
            return []
        if self.unavailable_since is not None:
            self.log(f"{self.name} answers again")
            self.unavailable_since = None
        ended = []
        for job in jobs:
            st: JobStatus | None = statuses.get(str(job.cluster_id))
            if st is None:
                continue
            self.cluster_state[job.seq] = st.state.value
            if st.state is not ClusterState.DONE:
                continue  # queued, held, running, suspended, exiting: not done yet
            outcome = self._outcome(job, st)
            if outcome is not None:
                ended.append(Ended(job, outcome, now))
                self.cluster_state.pop(job.seq, None)
        return ended

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
        if code is None:
            return Outcome(UNKNOWN_EXIT, 0, cpu, maxrss, f"{self.name} job {cid} left the queue with no exit status")
        return Outcome(code, 0, cpu, maxrss, f"{self.name} job {cid}")

    # -- control ---------------------------------------------------------------------

    def stop(self, job: Job) -> str | None:
        if not job.cluster_id:
            return None
        running = [job.cluster_id] if self.cluster_state.get(job.seq) == "running" else []
        try:
            said = self.backend.stop([job.cluster_id], running)
        except DrmError as err:
            said = f"could not stop: {err}"
        return f"{self.name} job {job.cluster_id}: {said}"

    def cont(self, job: Job) -> str | None:
        if not job.cluster_id:
            return None
        try:
            said = self.backend.cont([job.cluster_id])
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
