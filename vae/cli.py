"""What the commands share: running a main() so that user errors print as one line."""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable

from vae.config.schema import valid_keys
from vae.errors import Interrupted, UserError

INVOKED_AS = "VAE_INVOKED_AS"  # how the user ran the commands, handed down to a sweep's worker processes


def invoked_as(command: str) -> str:
    """How the user runs `command` (train, evaluate or sweep), in the style of the command they ran:
    `vae-train` when installed, `python -m vae train`, or `python train.py` in a checkout."""
    commands = {"script": f"vae-{command}", "module": f"python -m vae {command}", "checkout": f"python {command}.py"}
    return commands[invocation_style()]


def invocation_style() -> str:
    """'script' (an installed vae-NAME), 'module' (python -m vae NAME) or 'checkout' (NAME.py): this process's
    command, or the one that started it (a sweep's worker)."""
    argv0 = sys.argv[0]
    if os.environ.get(INVOKED_AS) in ("script", "module", "checkout"):
        return os.environ[INVOKED_AS]
    if argv0.startswith("python -m vae"):
        return "module"
    return "script" if os.path.basename(argv0).startswith("vae-") else "checkout"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors, so that `run` prints them as one line; a flag it does not know
    that names a config key (`--epochs 20`, pytorch/examples' spelling) is answered with the override to write."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse_intermixed_args(self, args: list[str]) -> argparse.Namespace:
        parsed, unknown = self.parse_known_intermixed_args(args)
        if unknown:
            raise UserError(f"unrecognized arguments: {' '.join(unknown)}{override_hint(unknown[0], args)} "
                            f"(see {self.prog} --help)")
        return parsed


def override_hint(flag: str, argv: list[str]) -> str:
    """'; set config keys as section.key=value: train.epochs=20' for `--epochs 20`, `--epochs=20` or a near miss."""
    name, equals, value = flag.removeprefix("--").partition("=")
    names = {}  # a key's name -> its dotted key: train's, else eval's, where several sections have the name
    for key in sorted(valid_keys(), key=lambda k: {"train": 0, "eval": 1}.get(k.split(".")[0], 2)):
        names.setdefault(key.split(".")[1], key)
    close = difflib.get_close_matches(name.replace("-", "_"), names, n=1, cutoff=0.8)
    if not flag.startswith("--") or not close:
        return ""
    if not equals:
        after = argv[argv.index(flag) + 1:argv.index(flag) + 2]
        value = after[0] if after and not after[0].startswith("-") else "VALUE"
    return f"; set config keys as section.key=value: {names[close[0]]}={value}"


def one_line(message: str) -> str:
    """`message` with its control characters escaped (a file named `bad\\nname.png`), so that it stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Call main(argv) (default: the command line's); a UserError or OS error becomes 'error: ...' on stderr and
    exit status 2.

    A stop on a signal exits with 128 + its number (130 for Ctrl-C, 143 for SIGTERM).
    """
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (UserError, OSError) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
