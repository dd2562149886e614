"""python -m vae train|evaluate|sweep [ARGS ...]: the commands vae-train, vae-evaluate and vae-sweep."""
import importlib
import sys

from vae.cli import run

COMMANDS = ("train", "evaluate", "sweep")

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m vae {{{','.join(COMMANDS)}}} [ARGS ...] (each takes --help)", file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = f"python -m vae {sys.argv[1]}"  # what --help and errors call the command
    run(importlib.import_module(f"vae.commands.{sys.argv[1]}").main, sys.argv[2:])
