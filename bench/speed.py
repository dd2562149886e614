"""Side-by-side speed benchmark: the classic PyTorch VAE example loop vs this project's training path.

    python bench/speed.py --data ../shared/data [--epochs 10] [--device cpu|cuda] [--threads N]
                          [--variants compile,bf16,eager,...] [--fast 256:3e-3,512:4e-3] [--scaling]

Everything runs in this one process on the same machine and data, with the 784-400-20 MLP and the
Bernoulli cross-entropy + analytic KL objective. It prints, in order:
  1. the floor: the step's matrix products timed alone, as seconds per epoch (fp32 and bf16);
  2. the reference loop and ours at the classic settings (batch 128, Adam 1e-3): s/epoch (train,
     train + test), samples/s, peak memory (one epoch, in a fresh process on the CPU), final test
     loss, time to 106 nats, the floor as a fraction of the epoch time;
     on CUDA ours replays each full batch's step as a CUDA graph (train.cuda_graph); `--variants`
     adds ours with torch.compile, bf16 autocast, without the graph (eager), or a +-join of these;
  3. time to 106 nats for each batch:lr in `--fast` (stopping once it is reached);
  4. with `--scaling`, s/epoch for batch sizes 64..4096 and hidden widths 200..1600.
A speed ratio only counts when both reach the same final test loss within 0.5 nats.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import platform
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vae.config.schema import LossConfig, ModelConfig, TrainConfig  # noqa: E402
from vae.data.mnist import load_dataset
from vae.data.split import PIXELS  # noqa: E402
from vae.evaluate.heldout import evaluate  # noqa: E402
from vae.model.vae import VAE  # noqa: E402
from vae.train.loop import run_epoch  # noqa: E402
from vae.train.progress import EpochProgress  # noqa: E402
from vae.train.step import Batches, EagerStep, GraphedStep, StepOptions  # noqa: E402

TARGET_NATS = 106.0


class ReferenceVAE(nn.Module):
    """pytorch/examples vae/main.py, as published: sigmoid outputs, fc21/fc22 heads."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def reference_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def run_reference(root: str, epochs: int, device: torch.device) -> list[dict]:
    torch.manual_seed(1)
    loading = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}  # as the example does
    train_loader = DataLoader(datasets.MNIST(root, train=True, transform=transforms.ToTensor()),
                              batch_size=128, shuffle=True, **loading)
    test_loader = DataLoader(datasets.MNIST(root, train=False, transform=transforms.ToTensor()), batch_size=128,
                             **loading)
    model = ReferenceVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for x, _ in train_loader:
            x = x.to(device)
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = reference_loss(recon, x, mu, logvar)
            loss.backward()
            opt.step()
            loss.item()  # the example reads the loss every step
        sync(device)
        train_s = time.perf_counter() - t0
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for x, _ in test_loader:
                x = x.to(device)
                recon, mu, logvar = model(x)
                test_loss += reference_loss(recon, x, mu, logvar).item()
        rows.append({"epoch": epoch, "train_s": train_s, "total_s": time.perf_counter() - t0,
                     "test_loss": test_loss / len(test_loader.dataset)})
    return rows


def our_step(model: VAE, opt: torch.optim.Optimizer, train_split, device: torch.device, cfg: TrainConfig):
    """The project's step for the plain objective: graphed on CUDA unless cfg.cuda_graph is off."""
    net = torch.compile(model) if cfg.compile else model
    step = EagerStep(net, opt, Batches(train_split, False, 1, model.noise_dim),
                     StepOptions(LossConfig(), cfg.precision == "bf16", cfg.grad_clip))
    return GraphedStep(step, cfg.batch_size) if cfg.cuda_graph and device.type == "cuda" else step


def run_ours(splits, epochs: int, device: torch.device, cfg: TrainConfig, hidden: int = 400,
             stop_at: float | None = None) -> list[dict]:
    """This project's path (training.run_epoch + evaluate); the first epoch includes any compile time."""
    train_split, test_split = splits
    torch.manual_seed(1)
    model = VAE(ModelConfig(hidden_dims=(hidden,))).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    gen = torch.Generator(device=device).manual_seed(1)
    step = our_step(model, opt, train_split, device, cfg)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        run_epoch(step, EpochProgress.begin(len(train_split), gen), gen, LossConfig(), epoch,
                  dataclasses.replace(cfg, epochs=epochs))
        sync(device)
        train_s = time.perf_counter() - t0
        test_loss = evaluate(model, test_split, seed=1)["loss"] if test_split is not None else float("nan")
        rows.append({"epoch": epoch, "train_s": train_s, "total_s": time.perf_counter() - t0, "test_loss": test_loss})
        if stop_at is not None and test_loss <= stop_at:
            break
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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
        with PeakMemory(device) as mem:
            run_reference(root, 1, device) if cfg is None else run_ours(load_dataset(root, False, device), 1, device, cfg)
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
    layers = [(PIXELS, hidden), (hidden, 2 * latent), (latent, hidden), (hidden, PIXELS)]
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


def graph_replay_seconds(train_split, device: torch.device, batch: int = 128, steps: int = 200) -> tuple[float, float]:
    """(seconds per step of the training loop's graphed steps, of the graph's replays alone):
    what the GPU needs for a step against what the loop around it adds."""
    model = VAE(ModelConfig()).to(device)
    opt = torch.optim.Adam(model.parameters(), fused=True)
    gen = torch.Generator(device=device).manual_seed(1)
    graphed = our_step(model, opt, train_split, device, TrainConfig(batch_size=batch))
    progress = EpochProgress.begin(len(train_split), gen)
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


def summary(name: str, rows: list[dict], n_train: int, peak: int, floor: float) -> dict:
    """One line: mean s/epoch (all epochs, so compile time counts) and, apart, epochs 2 on."""
    train_s = sum(r["train_s"] for r in rows) / len(rows)
    total_s = sum(r["total_s"] for r in rows) / len(rows)
    later = rows[1:] or rows
    steady_s = sum(r["train_s"] for r in later) / len(later)
    elapsed, reached = 0.0, None
    for r in rows:
        elapsed += r["total_s"]
        if reached is None and r["test_loss"] <= TARGET_NATS:
            reached = elapsed
    print(f"{name:<16} {train_s:6.3f} s/epoch train ({steady_s:6.3f} from epoch 2, {train_s * len(rows):6.2f} s in all)  "
          f"{total_s:6.3f} train+test  "
          f"{n_train / train_s:6.0f} samples/s  peak {peak / 2**20:5.0f} MiB  final test {rows[-1]['test_loss']:8.3f} "
          f"nats  to {TARGET_NATS:.0f}: " + (f"{reached:6.1f} s" if reached else "   never") +
          f"  floor/train {floor / steady_s:4.0%}", flush=True)
    return {"train_s": train_s, "total_s": total_s, "final": rows[-1]["test_loss"], "to_target": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--variants", default="",
                        help="comma list of compile, bf16, eager (no CUDA graph) or their +-joins: also run ours so")
    parser.add_argument("--fast", default="", help="comma list of batch:lr to time to 106 nats, e.g. 256:3e-3")
    parser.add_argument("--scaling", action="store_true", help="also print s/epoch by batch size and width")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    splits = load_dataset(args.data, download=False, device=device)
    n_train = len(splits[0])
    floor = {dtype: floor_seconds(128, dtype, device, n_train) for dtype in (torch.float32, torch.bfloat16)}
    print(f"floor at batch 128 (matrix products only, {n_train:,} examples): fp32 {floor[torch.float32]:.2f} s/epoch, "
          f"bf16 {floor[torch.bfloat16]:.2f} s/epoch")

    rows = run_reference(args.data, args.epochs, device)
    ref = summary("reference", rows, n_train, fresh_process_peak(args.data, device, None), floor[torch.float32])
    results = {}
    for variant in ["ours", *filter(None, args.variants.split(","))]:
        options = set(variant.split("+"))
        cfg = TrainConfig(compile="compile" in options, precision="bf16" if "bf16" in options else "fp32",
                          cuda_graph="eager" not in options)
        name = variant if variant == "ours" else f"ours+{variant}"
        try:
            rows = run_ours(splits, args.epochs, device, cfg)
        except Exception as e:  # noqa: BLE001 - one variant failing should not lose the others' numbers
            print(f"{name}: failed: {type(e).__name__}: {e}", flush=True)
            continue
        results[name] = summary(name, rows, n_train, fresh_process_peak(args.data, device, cfg),
                                floor[torch.bfloat16 if "bf16" in options else torch.float32])
    if device.type == "cuda":
        loop, replay = graph_replay_seconds(splits[0], device)
        print(f"graphed step at batch 128: {loop * 1e6:.0f} us in the training loop, {replay * 1e6:.0f} us for the "
              f"graph's replays alone")
    if "ours" not in results:
        return
    ours = results["ours"]
    same = abs(ref["final"] - ours["final"]) <= 0.5
    print(f"ratio (reference / ours): {ref['train_s'] / ours['train_s']:.2f}x train, "
          f"{ref['total_s'] / ours['total_s']:.2f}x train+test; final test losses "
          + ("agree within 0.5 nats" if same else "DIFFER by more than 0.5 nats: the ratio does not count"))

    time_fast_settings(args, splits, device, ref)
    if args.scaling:
        scaling_table(splits[0], device)


def time_fast_settings(args, splits, device: torch.device, ref: dict) -> None:
    """Time to 106 nats for each batch:lr of --fast, against the reference's."""
    n_train = len(splits[0])
    for setting in filter(None, args.fast.split(",")):
        batch, lr = setting.split(":")
        cfg = TrainConfig(batch_size=int(batch), lr=float(lr))
        rows = run_ours(splits, args.epochs, device, cfg, stop_at=TARGET_NATS)
        res = summary(f"ours {batch}:{lr}", rows, n_train, fresh_process_peak(args.data, device, cfg),
                      floor_seconds(int(batch), torch.float32, device, n_train))
        if res["to_target"] and ref["to_target"]:
            print(f"  time to {TARGET_NATS:.0f} nats: {ref['to_target'] / res['to_target']:.1f}x the reference's "
                  f"({len(rows)} epochs)")


def scaling_table(train_split, device: torch.device, widths=(200, 400, 800, 1600),
                  batches=(64, 128, 256, 512, 1024, 2048, 4096)) -> None:
    """s/epoch of one training epoch for each batch size and hidden width, and its fraction of the floor."""
    print("s/epoch (fraction of the fp32 matrix-product floor) by batch size (rows) and hidden width (columns)")
    print(f"{'batch':>6} " + " ".join(f"{w:>14}" for w in widths))
    for batch in batches:
        cells = []
        for width in widths:
            rows = run_ours((train_split, None), 1, device, TrainConfig(batch_size=batch), hidden=width)
            floor = floor_seconds(batch, torch.float32, device, len(train_split), hidden=width, reps=5)
            cells.append(f"{rows[0]['train_s']:7.2f} ({floor / rows[0]['train_s']:4.0%})")
        print(f"{batch:>6} " + " ".join(f"{c:>14}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
