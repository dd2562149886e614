"""Sweep a config: python sweep.py --config FILE --grid loss.beta=0.5,1,2 [--seeds 3] [section.key=value ...]"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vae.cli import ArgumentParser, run
from vae.config.load import load_config, to_dict
from vae.sweep.pool import configure_worker, run_workers, usable_cores
from vae.sweep.report import summary
from vae.sweep.spec import HEARTBEAT_SECONDS, Sweep, load, parse_grid, parse_search, without_password
from vae.sweep.storage import STORAGE_ENV
from vae.sweep.study import create
from vae.sweep.worker import work


def main(argv: list[str]) -> None:
    parser = ArgumentParser(description="Train many runs of one config as an Optuna study: a grid or a search.")
    parser.add_argument("--config", metavar="FILE|NAME", help="YAML config file of the base run, or a shipped "
                        "config's name (mnist, ...)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="train every value of KEY (values as YAML; lists in brackets); repeat for a grid")
    parser.add_argument("--search", action="append", default=[], metavar="KEY=DIST",
                        help="search KEY over log(low,high), uniform(low,high), int(low,high) or choice(a,b,...) "
                             "with TPE on the validation loss, or NSGA-II on its rate and distortion "
                             "(--objectives; needs data.val_size)")
    parser.add_argument("--trials", type=int, default=0, help="trials of a --search")
    parser.add_argument("--prune", nargs="?", const="median", default="", choices=["median", "halving"],
                        help="stop unpromising trials of a search after any epoch (default: median)")
    parser.add_argument("--objectives", metavar="loss|rate,distortion",
                        help="what a search minimizes: the validation -ELBO with TPE (default), or its rate and "
                             "distortion as two objectives with NSGA-II, for the Pareto front (not with --prune)")
    parser.add_argument("--seeds", type=int, default=1, help="train each grid point with this many train.seed values")
    parser.add_argument("--dir", help="the sweep directory (default: outputs/<config name>_sweep)")
    parser.add_argument("--storage", default="", metavar="URL",
                        help="a database shared by many machines, e.g. postgresql://user@host/db, its password "
                             "from PGPASSWORD or ~/.pgpass (or in the URL: it is never shown or stored) "
                             "(default: the sweep directory's study.db, SQLite)")
    parser.add_argument("--study", default="sweep", metavar="NAME",
                        help="the study's name in --storage: the machines of one sweep give the same one")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (the cores are shared out)")
    parser.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS, metavar="SECONDS",
                        help="seconds between a running trial's heartbeats; a trial silent for 3 of them is "
                             "taken as dead and retried from its last.pt")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue a sweep (after Ctrl-C, kill -9 or a reboot); "
                        "takes --workers, and --storage to give its password again")
    parser.add_argument("--worker", metavar="SWEEP_DIR", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of the base config")
    args = parser.parse_intermixed_args(argv)
    if args.workers < 1 or args.seeds < 1 or args.heartbeat < 1:
        parser.error("--workers, --seeds and --heartbeat take whole numbers >= 1")
    if args.workers > usable_cores():
        parser.error(f"--workers {args.workers}: this process may use {usable_cores()} cores, and each worker "
                     f"needs one of its own")
    if args.storage and without_password(args.storage) != args.storage:
        os.environ[STORAGE_ENV] = args.storage  # this process's and its workers', never a file's or a screen's
    if args.worker:  # one of the processes that --workers started
        configure_worker(args.workers)
        work(load(Path(args.worker)), Path(args.worker), args.workers)
        return
    if args.resume:
        sweep_dir = Path(args.resume)
        check_resume(parser, args, load(sweep_dir))
    else:
        if args.config is None:
            parser.error("give --config FILE to start a sweep, or --resume SWEEP_DIR to continue one")
        base = load_config(args.config, args.overrides)
        sweep_dir = Path(args.dir or f"outputs/{Path(args.config).stem}_sweep")
        create(Sweep(config=to_dict(base), grid=parse_grid(args.grid), search=parse_search(args.search),
                     seeds=args.seeds, trials=args.trials, prune=args.prune,
                     objectives=(args.objectives or "loss").split(","), storage=without_password(args.storage),
                     heartbeat=args.heartbeat, study=args.study, argv=[without_password(a) for a in sys.argv]),
               sweep_dir)
    run_workers(sweep_dir, args.workers)
    print(summary(sweep_dir))


def check_resume(parser: ArgumentParser, args: argparse.Namespace, sweep: Sweep) -> None:
    """--resume continues the sweep as it was made: it takes --workers, and --storage only to give the
    stored database's password again; anything else would be silently ignored, so it is refused."""
    given = [flag for flag, value, default in (
        ("--config", args.config, None), ("--grid", args.grid, []), ("--search", args.search, []),
        ("--trials", args.trials, 0), ("--prune", args.prune, ""), ("--objectives", args.objectives, None),
        ("--seeds", args.seeds, 1),
        ("--dir", args.dir, None),
        ("--study", args.study, "sweep"), ("--heartbeat", args.heartbeat, HEARTBEAT_SECONDS),
        ("section.key=value overrides", args.overrides, [])) if value != default]
    if given:
        parser.error(f"--resume continues the sweep as sweep.json describes it; it takes {', '.join(given)} from "
                     f"there, not from the command line (drop them, or start a new sweep with --config and --dir)")
    if args.storage and without_password(args.storage) != sweep.storage:
        parser.error(f"--storage on --resume gives the sweep's own database again (for its password), and this "
                     f"sweep's is {sweep.storage or 'its study.db'}")


def cli() -> None:
    """The command `vae-sweep` (and `python -m vae sweep`, and sweep.py in a checkout)."""
    run(main)
