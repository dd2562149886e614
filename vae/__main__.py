"""python -m vae train|evaluate|sweep [ARGS ...]: the commands vae-train, vae-evaluate and vae-sweep."""
import importlib
import sys

from vae.cli import run

COMMANDS = ("train", "evaluate", "sweep")
USAGE = f"usage: python -m vae {{{','.join(COMMANDS)}}} [ARGS ...] (each takes --help)"

if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n  train     train a VAE from a YAML config, or resume a run\n"
              f"  evaluate  evaluate a checkpoint, score new data against it, or compare runs\n"
              f"  sweep     sweep a config over a grid or an Optuna search")
        sys.exit(0)
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = f"python -m vae {sys.argv[1]}"  # what --help and errors call the command
    run(importlib.import_module(f"vae.commands.{sys.argv[1]}").main, sys.argv[2:])
