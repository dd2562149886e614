"""python evaluate.py ... in a checkout: the command vae-evaluate (vae/commands/evaluate.py says what it takes)."""
from vae.cli import run
from vae.commands.evaluate import main

if __name__ == "__main__":
    run(main)
