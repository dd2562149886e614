"""The exceptions a user or the machine can cause; entry points print them as a single line."""


class UserError(Exception):
    """Bad input from the user (config, checkpoint, data, paths): reported, never a traceback."""


class MachineError(OSError):
    """The machine, not the input, stops the work (a full disk, a folder it may not write): reported in one
    line like a UserError, and a sweep queues such a trial again instead of failing it for good."""


class Interrupted(BaseException):
    """Training stopped on SIGINT/SIGTERM after saving; the CLI exits with 128 + the signal number.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` can swallow it.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
