"""The per-host scheduler: ``loop`` (pass order and wiring), ``jobs`` (the JobBook, the only
code that changes a job's state), ``ledger`` (write-ahead record), ``recovery`` (a pure plan
from what was saved and what was probed), ``executor`` (the protocol), ``local`` (jobs as
processes, through the job runner of ``runner``) and ``drm`` (jobs in a resource manager)."""
