"""The one exception type users can cause; entry points print it as a single line."""


class UserError(Exception):
    """Bad input from the user (config, checkpoint, data, paths): reported, never a traceback."""
