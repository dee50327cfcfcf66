"""How the loop sleeps: until the next tick, a signal, or news from the executor.  Signal
handlers only record the signal (and write a byte to a pipe the loop selects on)."""

from __future__ import annotations

import contextlib
import os
import select
import signal

RECORDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGTERM, signal.SIGINT,
            signal.SIGHUP)


class Wakeup:
    def __init__(self) -> None:
        self.signals: list[int] = []
        self._r = self._w = -1

    def install(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in RECORDED:
            signal.signal(sig, self._record)
        # SIGCHLD needs a handler (not SIG_DFL) so that it reaches the wakeup fd: the runner's
        # death, and the end of a job a dead runner left to us, wake the loop.
        signal.signal(signal.SIGCHLD, lambda s, f: None)

    def _record(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)  # handlers only record; the loop acts

    def take(self) -> list[int]:
        taken, self.signals = self.signals, []
        return taken

    def wait(self, timeout: float, other: int | None, linger: float = 0.0) -> None:
        """Sleep up to ``timeout`` seconds, less if a signal came or ``other`` (a descriptor,
        the job runner's socket) becomes readable -- but for the first ``linger`` seconds
        only a signal ends the sleep (news from ``other`` piles up meanwhile)."""
        if self.signals:
            timeout = 0.0
        if linger > 0 and timeout > 0:
            self._select([self._r], min(linger, timeout))
            if self.signals:
                return
            timeout = max(0.0, timeout - linger)
        self._select([self._r] + ([other] if other is not None else []), timeout)

    def _select(self, fds: list[int], timeout: float) -> None:
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except InterruptedError:
            ready = []
        if self._r in ready:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while os.read(self._r, 4096):
                    pass
