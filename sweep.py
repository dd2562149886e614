"""Sweep a config: python sweep.py --config FILE --grid loss.beta=0.5,1,2 [--seeds 3] [section.key=value ...]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vae.cli import ArgumentParser, run
from vae.config.load import load_config, to_dict
from vae.sweep.pool import configure_worker, run_workers
from vae.sweep.spec import HEARTBEAT_SECONDS, Sweep, load, parse_grid, parse_search
from vae.sweep.study import create, summary, work


def main(argv: list[str]) -> None:
    parser = ArgumentParser(description="Train many runs of one config as an Optuna study: a grid or a search.")
    parser.add_argument("--config", help="YAML config file of the base run")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="train every value of KEY (values as YAML; lists in brackets); repeat for a grid")
    parser.add_argument("--search", action="append", default=[], metavar="KEY=DIST",
                        help="search KEY over log(low,high), uniform(low,high), int(low,high) or choice(a,b,...) "
                             "with TPE, on the validation loss (needs data.val_size)")
    parser.add_argument("--trials", type=int, default=0, help="trials of a --search")
    parser.add_argument("--prune", nargs="?", const="median", default="", choices=["median", "halving"],
                        help="stop unpromising trials of a search after any epoch (default: median)")
    parser.add_argument("--seeds", type=int, default=1, help="train each grid point with this many train.seed values")
    parser.add_argument("--dir", help="the sweep directory (default: outputs/<config name>_sweep)")
    parser.add_argument("--storage", default="", metavar="URL",
                        help="a database shared by many machines, e.g. postgresql://user@host/db "
                             "(default: the sweep directory's study.db, SQLite)")
    parser.add_argument("--study", default="sweep", metavar="NAME",
                        help="the study's name in --storage: the machines of one sweep give the same one")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (the cores are shared out)")
    parser.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS, metavar="SECONDS",
                        help="seconds between a running trial's heartbeats; a trial silent for 3 of them is "
                             "taken as dead and retried from its last.pt")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue a sweep (after Ctrl-C, kill -9 or a reboot)")
    parser.add_argument("--worker", metavar="SWEEP_DIR", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of the base config")
    args = parser.parse_intermixed_args(argv)
    if args.workers < 1 or args.seeds < 1 or args.heartbeat < 1:
        parser.error("--workers, --seeds and --heartbeat take whole numbers >= 1")
    if args.worker:  # one of the processes that --workers started
        configure_worker(args.workers)
        work(load(Path(args.worker)), Path(args.worker))
        return
    if args.resume:
        sweep_dir = Path(args.resume)
        load(sweep_dir)
    else:
        if args.config is None:
            parser.error("give --config FILE to start a sweep, or --resume SWEEP_DIR to continue one")
        base = load_config(args.config, args.overrides)
        sweep_dir = Path(args.dir or f"outputs/{Path(args.config).stem}_sweep")
        spec = Sweep(config=to_dict(base), grid=parse_grid(args.grid),
                           search=parse_search(args.search), seeds=args.seeds, trials=args.trials,
                           prune=args.prune, storage=args.storage, heartbeat=args.heartbeat, study=args.study,
                           argv=sys.argv)
        create(spec, sweep_dir)
    run_workers(sweep_dir, args.workers, Path(__file__).resolve())
    print(summary(sweep_dir))


if __name__ == "__main__":
    run(main)
