"""Train a VAE: vae-train --config mnist [--resume RUN_DIR|CKPT] [--print-config] [section.key=value ...]"""
from __future__ import annotations

import dataclasses
import sys

from vae.cli import ArgumentParser, run
from vae.config.load import load_config, split_override, to_dict, to_yaml
from vae.config.schema import OutputConfig
from vae.errors import UserError


def main(argv: list[str]) -> None:
    parser = ArgumentParser(description="Train a VAE on MNIST from a YAML config.")
    parser.add_argument("--config", metavar="FILE|NAME", help="YAML config file, or a shipped config's name (mnist, "
                        "mnist_cpu_hour, ...; default with --resume: the checkpoint's own)")
    parser.add_argument("--resume", metavar="RUN_DIR|CKPT",
                        help="continue a run: its directory (uses checkpoints/last.pt) or a checkpoint file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in output.dir instead of refusing")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults, file, checkpoint and overrides) as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, values parsed as YAML (train.lr=3e-4)")
    args = parser.parse_intermixed_args(argv)  # flags may stand between the overrides
    if args.config is None and args.resume is None:
        parser.error("give --config FILE to start a run, or --resume RUN_DIR|CKPT to continue one")

    # torch (seconds to import) loads only once the arguments and a new run's config are checked
    resume, base = None, None
    if args.resume is not None:
        from vae.run.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of
        resume = resolve_checkpoint(args.resume)
        base = to_dict(load_checkpoint(resume)[1])
    cfg = load_config(args.config, args.overrides, base)
    if resume is not None and "output.dir" not in [split_override(o)[0] for o in args.overrides]:
        home = run_dir_of(resume)  # continue in place unless output.dir=DIR asks for a fork
        if home is None:
            raise UserError(f"{resume} is not in a run's checkpoints/ folder: give output.dir=DIR "
                            f"to continue it there")
        cfg = dataclasses.replace(cfg, output=OutputConfig(dir=str(home)))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    from vae.train.loop import train
    train(cfg, resume=resume, overwrite=args.overwrite, argv=sys.argv)


def cli() -> None:
    """The command `vae-train` (and `python -m vae train`, and train.py in a checkout)."""
    run(main)
