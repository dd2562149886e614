"""Ctrl-C and SIGTERM during training: finish the step, save, then stop; a second signal stops at once."""
from __future__ import annotations

import os
import signal
import sys
import threading

from vae.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While active, the first SIGINT/SIGTERM only sets `signum`; the loop checks it after each step."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second signal: stop now (atomic writes remove their temp files)
            raise Interrupted(signum, f"{signal.Signals(signum).name} again: stopped at once; the last "
                                      f"checkpoint written is intact")
        self.signum = signum
        message = (f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                   f"(send it again to stop at once)\n")
        os.write(sys.stderr.fileno(), message.encode())  # print() here could re-enter a write in progress

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
