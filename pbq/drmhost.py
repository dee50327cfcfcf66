"""A scheduler on a cluster head node: jobs go to the resource manager, not to fork().

The hostfile line names the DRM (``headnode linux 50 50 0 drm=slurm queue=debug mem=2G``);
``max``/``wday`` then mean "jobs of ours queued or running in the DRM at once".  The
scheduler's loop, files and control commands stay the same; this module supplies what
differs:

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
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .drm.backend import DrmBackend
from .drm.base import ClusterState, DrmError, DrmUnavailable, JobStatus, Resources
from .errors import PbqError
from .hostfile import Host
from .model import Job

RESOURCE_KEYS = ("cpu", "mem", "vmem", "queue", "walltime", "pe")


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
        return Resources(**{k: v for k, v in layers.items()})  # type: ignore[arg-type]
    except TypeError as err:
        raise PbqError(f"bad cluster resources for host {host.name}: {err}") from None


@dataclass
class Ended:
    job: Job
    exit_code: int | None  # None = unknown
    signal: int = 0
    note: str = ""
    maxrss: int = 0
    cpu: float = 0.0


class DrmDriver:
    def __init__(self, host: Host, cfg: Config, workspace: Path, log_dir: Path, log) -> None:
        name = host.drm or ""
        self.backend = DrmBackend.load(name, cfg.cluster.plugin_dir or None)
        self.name = self.backend.name
        self.host = host
        self.cfg = cfg
        self.workspace = workspace
        self.log_dir = log_dir
        self.log = log
        self.poll_interval = cfg.cluster.poll_interval
        self.next_poll = 0.0
        self.unavailable_since: float | None = None
        # validate the resources once, at start-up: a typo is an error now, not per job
        self.base_resources = resources_for(host, cfg)

    # -- submit ----------------------------------------------------------------

    def submit(self, job: Job, job_id: str, resources: Resources) -> str:
        log_file = self.log_dir / f"{job_id}.log"
        command = job.line.decode("utf-8", "surrogateescape")
        return self.backend.submit(command, job_id, self.workspace, log_file, resources)

    def find_submitted(self, job_id: str) -> str | None:
        """The cluster id of a job submitted just before a crash, from its ticket."""
        folder = self.workspace / ".pbq-drm"
        try:
            tickets = list(folder.glob("job-*.json"))
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

    # -- poll ------------------------------------------------------------------

    def poll_due(self, mono: float) -> bool:
        return mono >= self.next_poll

    def poll(self, jobs: list[Job], mono: float) -> list[Ended]:
        """One status query for all of our jobs; the ones that ended, with their exit codes."""
        ids = [j.cluster_id for j in jobs if j.cluster_id]
        self.next_poll = mono + self.poll_interval
        if not ids:
            return []
        try:
            statuses = self.backend.statuses(ids)
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
            job.extra["drm_state"] = st.state.value
            if st.state is not ClusterState.DONE:
                continue  # queued, held, running, suspended, exiting: not done yet
            try:
                code = self.backend.exit_code(str(job.cluster_id), self.workspace, st.exit_code)
            except DrmUnavailable:
                continue  # judge it at the next poll
            usage = None
            try:
                usage = self.backend.usage(str(job.cluster_id), self.workspace)
            except Exception:  # noqa: BLE001 - usage is optional information
                usage = None
            if code is None:
                ended.append(Ended(job, None, note=f"{self.name} job {job.cluster_id} left the queue with no exit status"))
            elif code > 128 and code < 160:
                ended.append(Ended(job, code, 0, note=f"{self.name} job {job.cluster_id}"))
            else:
                ended.append(Ended(job, code, note=f"{self.name} job {job.cluster_id}"))
            if usage is not None:
                ended[-1].maxrss = int(usage.peak_rss_bytes or 0)
                ended[-1].cpu = float(usage.cpu_seconds or 0.0)
        return ended

    # -- control -----------------------------------------------------------------

    def stop(self, jobs: list[Job]) -> str:
        ids = [str(j.cluster_id) for j in jobs if j.cluster_id]
        running = [str(j.cluster_id) for j in jobs if j.cluster_id and j.extra.get("drm_state") == "running"]
        try:
            return self.backend.stop(ids, running)
        except DrmError as err:
            return f"could not stop: {err}"

    def cont(self, jobs: list[Job]) -> str:
        ids = [str(j.cluster_id) for j in jobs if j.cluster_id]
        try:
            return self.backend.cont(ids)
        except DrmError as err:
            return f"could not continue: {err}"

    def forget(self, cluster_ids: list[str]) -> None:
        """Remove the finished jobs' scripts, exit-code files and tickets."""
        for cid in cluster_ids:
            try:
                self.backend.forget(cid, self.workspace)
            except (OSError, PbqError):
                pass

    def cancel(self, jobs: list[Job]) -> None:
        ids = [str(j.cluster_id) for j in jobs if j.cluster_id]
        if ids:
            self.backend.cancel(ids)
