"""What the commands share: running a main() so that user errors print as one line."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vae.errors import Interrupted, UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors, so that `run` prints them as one line."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Call main(argv) (default: the command line's); a UserError or OS error becomes 'error: ...' on stderr and
    exit status 2.

    A stop on a signal exits with 128 + its number (130 for Ctrl-C, 143 for SIGTERM).
    """
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
