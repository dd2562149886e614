"""python sweep.py ... in a checkout: the command vae-sweep (vae/commands/sweep.py says what it takes)."""
from vae.cli import run
from vae.commands.sweep import main

if __name__ == "__main__":
    run(main)
