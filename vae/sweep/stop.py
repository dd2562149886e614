"""A sweep worker's stop on SIGINT or SIGTERM at any moment of its life, not only while it trains.

Training takes a signal itself (vae/train/interrupt.py: it finishes the step, saves and raises Interrupted),
but only while it trains: before (the trial's start-up) and after (its report), the default SIGTERM would
kill the worker and leave its trial running until its heartbeat went stale. And a signal in a run's last
epoch ends no run: training finishes it, and the worker would go on to its next trial.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from vae.errors import Interrupted
from vae.train.interrupt import SIGNALS


class WorkerStop:
    """While active, SIGINT/SIGTERM outside training raise Interrupted where the worker is, but wait for the end of
    a `deferred()` block; `received()` tells a signal that training took and went on after."""

    def __init__(self):
        self._previous = {}
        self._pipe: tuple[int, int] | None = None
        self._wakeup = -1
        self._deferring = False

    def _handle(self, signum, frame):
        if not self._deferring:  # else the wakeup fd holds it for the block's end
            raise Interrupted(signum, f"{signal.Signals(signum).name}: stopped")

    @contextmanager
    def deferred(self, then_stop: bool = True):
        """A block that a signal does not cut in half (a trial failed and queued again: never the one without the
        other); a signal that came meanwhile stops the worker at its end, unless it is stopping already."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        signum = self.received()
        if then_stop and signum is not None:
            raise Interrupted(signum, f"{signal.Signals(signum).name}: stopped")

    def __enter__(self) -> WorkerStop:
        if threading.current_thread() is not threading.main_thread():
            return self
        # Python writes each signal's number to the wakeup fd whichever handler then runs, training's too.
        self._pipe = os.pipe()
        for fd in self._pipe:
            os.set_blocking(fd, False)
        self._wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._wakeup)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def received(self) -> int | None:
        """The first SIGINT or SIGTERM since the last call, or None."""
        if self._pipe is None:
            return None
        try:
            numbers = os.read(self._pipe[0], 4096)
        except BlockingIOError:
            return None
        return next((n for n in numbers if n in SIGNALS), None)
