"""The one exception type users can cause; entry points print it as a single line."""


class UserError(Exception):
    """Bad input from the user (config, checkpoint, data, paths): reported, never a traceback."""


class Interrupted(BaseException):
    """Training stopped on SIGINT/SIGTERM after saving; the CLI exits with 128 + the signal number.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` can swallow it.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
