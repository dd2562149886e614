"""What the two entry points share: running a main() so that user errors print as one line."""
from __future__ import annotations

import sys
from collections.abc import Callable

from vae.errors import UserError


def run(main: Callable[[list[str]], None]) -> None:
    """Call main(argv); a UserError or OS error becomes 'error: ...' on stderr and exit status 2."""
    try:
        main(sys.argv[1:])
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
