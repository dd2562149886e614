"""train.precision: fp32 or bf16 autocast, `auto` timed on the machine with the run's own step before training.

A flag says whether the hardware has bf16 products; only a measurement says they pay: the casts around
a small model's products can cost more than the products save.
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

from vae.config.schema import Config
from vae.data.load import Splits
from vae.data.split import Split
from vae.model.vae import VAE
from vae.train.distributed import World, all_reduce
from vae.train.progress import EpochProgress
from vae.train.step import Step, make_step

TIMED_ROUNDS = 5  # alternating rounds of the steps compared
ROUND_SECONDS = 0.1  # the steps of a round are as many as take about this long (at least one)


@dataclass(frozen=True)
class Precision:
    bf16: bool  # the training forward pass under bf16 autocast
    ms_per_step: dict[str, float] | None = None  # {"fp32": ..., "bf16": ...} when `auto` timed them

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def choose_precision(cfg: Config, model: VAE, splits: Splits, world: World, device: torch.device,
                     state: dict | None) -> Precision:
    """train.precision resolved: `auto` keeps a checkpoint's choice, else takes the faster step on this machine
    (fp32 where the GPU has no bf16)."""
    if cfg.train.precision != "auto":
        return Precision(cfg.train.precision == "bf16")
    if state is not None and state["config"]["train"]["precision"] == "auto" \
            and state.get("precision") in ("fp32", "bf16"):  # what auto chose stays for the run's life
        return Precision(state["precision"] == "bf16")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return Precision(False)
    ms = step_milliseconds(cfg, model, splits, device, processes=world.size)
    # Every process decides on the mean of all processes' timings, so all decide alike.
    mean = all_reduce(torch.tensor([ms["fp32"], ms["bf16"]], dtype=torch.float64, device=device)) / world.size
    ms = dict(zip(("fp32", "bf16"), mean.tolist()))
    return Precision(ms["bf16"] < ms["fp32"], ms)


def step_milliseconds(cfg: Config, model: VAE, splits: Splits, device: torch.device, processes: int = 1,
                      round_seconds: float = ROUND_SECONDS) -> dict[str, float]:
    """Median milliseconds of one step at train.batch_size in fp32 and in bf16 on this process: the run's step
    (make_step's, on copies of the model and optimizer) on one batch of the training images, timed in TIMED_ROUNDS
    alternating rounds of about `round_seconds` after two steps of warm-up each. The run's weights and random
    streams are left as they were. Of a run of several `processes`, the autograd step each would run, without
    the gradients' averaging (the same in either precision)."""
    if processes > 1:  # what make_step gives a run under torchrun: neither the written-out step nor a graph
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, fast_step=False, cuda_graph=False))
    steps = {}
    for name in ("fp32", "bf16"):
        net = copy.deepcopy(model)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr, fused=True)
        steps[name] = make_step(cfg, net, opt, splits, World(), device, bf16=name == "bf16")
    return compare_steps(steps, splits.train, cfg.train.batch_size, cfg.loss.beta, device, round_seconds)


def compare_steps(steps: dict[str, Step], train: Split, batch_size: int, kl_weight: float, device: torch.device,
                  round_seconds: float = ROUND_SECONDS) -> dict[str, float]:
    """Median milliseconds of each of `steps` on one batch of `train`, timed in TIMED_ROUNDS alternating rounds
    of about `round_seconds` (so that a drift of the machine's speed hits all alike) after two steps of
    warm-up each. Their random numbers come from a generator of their own."""
    gen = torch.Generator(device=device).manual_seed(0)
    index = torch.randperm(len(train), generator=gen, device=device)[:batch_size]
    tally = EpochProgress.begin(len(index), gen)  # the steps count into a scratch tally

    def seconds(step: Step, n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            step(index, gen, kl_weight, tally)
        sync(device)
        return (time.perf_counter() - t0) / n

    warm = max(seconds(step, 2) for step in steps.values())
    n = max(1, round(round_seconds / warm))
    rounds = {name: [] for name in steps}
    for _ in range(TIMED_ROUNDS):
        for name, step in steps.items():
            rounds[name].append(seconds(step, n))
    return {name: 1e3 * statistics.median(times) for name, times in rounds.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
