"""Measuring tools for the benchmarks: our loop through the project's own make_step and run_epoch, the
matrix-product floor, the graphed step's overhead, peak memory. They return numbers; the scripts print."""
from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import threading
import time
from pathlib import Path

import torch
from torchvision import datasets

from bench.reference import run_reference, sync
from vae.config.schema import Config, ModelConfig, TrainConfig
from vae.data.load import Splits
from vae.data.mnist import load_dataset
from vae.data.split import MNIST_SHAPE, Split
from vae.denormals import flushed_denormals
from vae.device import native_bf16
from vae.evaluate.heldout import evaluate
from vae.model.vae import build_model
from vae.train.choose_step import make_step
from vae.train.distributed import World
from vae.train.loop import run_epoch
from vae.train.optimizer import make_optimizer
from vae.train.progress import EpochProgress
from vae.train.step import Speed

TARGET_NATS = 106.0


def our_step(train: Split, device: torch.device, train_cfg: TrainConfig, hidden: int = 400):
    """The project's model, optimizer and step (make_step: the written-out step on the CPU unless train.fast_step is
    off, graphed on CUDA unless train.cuda_graph is off), seeded."""
    cfg = Config(model=ModelConfig(hidden_dims=(hidden,)), train=train_cfg)
    torch.manual_seed(1)
    model = build_model(cfg.model).to(device)
    opt = make_optimizer(model, cfg.train)
    speed = Speed(cfg.train.precision == "bf16", torch.get_num_threads(), compiled=bool(cfg.train.compile))
    return model, make_step(cfg, model, opt, Splits(train, None, train), World(), device, speed)


@flushed_denormals()
def run_ours(splits: tuple[Split, Split | None], epochs: int, device: torch.device, train_cfg: TrainConfig,
             hidden: int = 400, stop_at: float | None = None) -> list[dict]:
    """This project's path (make_step, run_epoch, evaluate) on (train, test), subnormals flushed as train() has them;
    the first epoch includes any compiling."""
    train, test = splits
    train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    model, step = our_step(train, device, train_cfg, hidden)
    gen = torch.Generator(device=device).manual_seed(1)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        run_epoch(step, EpochProgress.begin(len(train), gen), gen, Config().loss, epoch, train_cfg)
        sync(device)
        train_s = time.perf_counter() - t0
        test_loss = evaluate(model, test, seed=1)["loss"] if test is not None else float("nan")
        rows.append({"epoch": epoch, "train_s": train_s, "total_s": time.perf_counter() - t0, "test_loss": test_loss})
        if stop_at is not None and test_loss <= stop_at:
            break
    return rows


def summarize(rows: list[dict], n_train: int, peak: int, floor: float) -> dict:
    """One loop's numbers: mean s/epoch (all epochs, so compile time counts) and from epoch 2 on, samples/s,
    peak bytes, the final test loss, the seconds to TARGET_NATS (None if never) and the floor's share."""
    train_s = sum(r["train_s"] for r in rows) / len(rows)
    later = rows[1:] or rows
    steady_s = sum(r["train_s"] for r in later) / len(later)
    elapsed, reached = 0.0, None
    for r in rows:
        elapsed += r["total_s"]
        if reached is None and r["test_loss"] <= TARGET_NATS:
            reached = elapsed
    return {"train_s": train_s, "steady_s": steady_s, "total_s": sum(r["total_s"] for r in rows) / len(rows),
            "epochs": len(rows), "samples_per_s": n_train / train_s, "peak_bytes": peak,
            "final": rows[-1]["test_loss"], "to_target": reached, "floor_share": floor / steady_s}


class PeakMemory:
    """Peak memory above the starting point while the block runs: CUDA allocator or process RSS.

    RSS only grows where the allocator has not kept freed memory from earlier work, so on the CPU
    it is measured in a fresh process (`fresh_process_peak`).
    """

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start, self.running = rss(), True
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, rss() - self.start)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.running = False
            self.thread.join()


def fresh_process_peak(root: str, device: torch.device, cfg: TrainConfig | None) -> int:
    """Peak bytes above the loaded data of one epoch of the reference (cfg None) or ours, on CUDA in
    this process, on the CPU in a new one."""
    if device.type == "cuda":
        splits = load_dataset(root, False, device)
        with PeakMemory(device) as mem:
            run_reference(root, 1, device) if cfg is None else run_ours(splits, 1, device, cfg)
        return mem.peak
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_peak_of_one_epoch, (root, cfg))


def _peak_of_one_epoch(root: str, cfg: TrainConfig | None) -> int:
    cpu = torch.device("cpu")
    if cfg is None:
        datasets.MNIST(root, train=True), datasets.MNIST(root, train=False)  # the data, read once before
        with PeakMemory(cpu) as mem:
            run_reference(root, 1, cpu)
    else:
        splits = load_dataset(root, False, cpu)
        with PeakMemory(cpu) as mem:
            run_ours(splits, 1, cpu, cfg)
    return mem.peak


def rss() -> int:
    """Resident bytes of this process (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    except OSError:
        return 0


def floor_seconds(batch: int, dtype: torch.dtype, device: torch.device, n: int, hidden: int = 400,
                  latent: int = 20, reps: int = 30) -> float:
    """Seconds per n-example epoch of the training step's matrix products alone.

    Per linear layer (in -> out): the forward product, the weight gradient and, except for the
    first layer (the data needs no gradient), the input gradient. On CUDA the products are replayed
    as one CUDA graph, so that the floor is the GPU's time and not that of launching them.
    """
    pixels = math.prod(MNIST_SHAPE)
    layers = [(pixels, hidden), (hidden, 2 * latent), (latent, hidden), (hidden, pixels)]
    shapes = []
    for i, (a, b) in enumerate(layers):
        shapes += [((batch, a), (a, b)), ((a, batch), (batch, b))] + ([((batch, b), (b, a))] if i else [])
    mats = [(torch.randn(*p, dtype=dtype, device=device), torch.randn(*q, dtype=dtype, device=device))
            for p, q in shapes]

    def products():
        for p, q in mats:
            p @ q
    products()
    sync(device)
    if device.type == "cuda":
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            products()
        products = graph.replay
    t0 = time.perf_counter()
    for _ in range(reps):
        products()
    sync(device)
    return (time.perf_counter() - t0) / reps * n / batch


def graph_replay_seconds(train: Split, device: torch.device, batch: int = 128, steps: int = 200) -> tuple[float, float]:
    """(seconds per step of the training loop's graphed steps, of the graph's replays alone):
    what the GPU needs for a step against what the loop around it adds."""
    _, graphed = our_step(train, device, TrainConfig(batch_size=batch))
    gen = torch.Generator(device=device).manual_seed(1)
    progress = EpochProgress.begin(len(train), gen)
    batches = progress.remaining(batch)
    for idx in batches[:10]:
        graphed(idx, gen, 1.0, progress)
    times = []
    for run in (lambda idx: graphed(idx, gen, 1.0, progress), lambda idx: graphed.graph.replay()):
        sync(device)
        t0 = time.perf_counter()
        for idx in batches[10:10 + steps]:
            run(idx)
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    return times[0], times[1]


def configs_from_command_line(description: str, default: str) -> list[str]:
    """--configs (a comma list of shipped names or paths) and --threads for a per-config CPU benchmark; sets the
    threads and prints the machine's line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--configs", default=default, help="comma list of configs (names or paths)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16 products {native_bf16(torch.device('cpu'))}")
    return args.configs.split(",")


def synthetic_splits(images: int) -> Splits:
    """Random 8-bit images of MNIST's shape as the training split, on the CPU: a step's time does not depend on
    the pixels' values."""
    gen = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (images, *MNIST_SHAPE), generator=gen, dtype=torch.uint8),
                  torch.zeros(images, dtype=torch.long), ("0",))
    return Splits(train, None, train)
