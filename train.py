"""python train.py ... in a checkout: the command vae-train (vae/commands/train.py says what it takes)."""
from vae.cli import run
from vae.commands.train import main

if __name__ == "__main__":
    run(main)
