"""Side-by-side speed benchmark: the classic PyTorch VAE example loop vs this project's training path.

    python bench/speed.py --data ../shared/data [--epochs 10] [--device cpu|cuda] [--threads N]

Both run in this one process on the same machine, data, model (784-400-20 MLP), optimizer
(Adam 1e-3), batch size (128) and objective (Bernoulli cross-entropy + analytic KL); each epoch
is timed for training alone and for training + test evaluation, and the test loss is recorded.
A speed ratio only counts when both reach the same final test loss within 0.5 nats.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vae.config import ModelConfig  # noqa: E402
from vae.data import load_mnist  # noqa: E402
from vae.evaluation import evaluate  # noqa: E402
from vae.model import VAE  # noqa: E402
from vae.resume import EpochProgress  # noqa: E402
from vae.training import train_step  # noqa: E402

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
    train_loader = DataLoader(datasets.MNIST(root, train=True, transform=transforms.ToTensor()),
                              batch_size=128, shuffle=True)
    test_loader = DataLoader(datasets.MNIST(root, train=False, transform=transforms.ToTensor()), batch_size=128)
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


def run_ours(root: str, epochs: int, device: torch.device, batch_size: int = 128, lr: float = 1e-3) -> list[dict]:
    train_split, test_split = load_mnist(root, download=False, device=device)
    torch.manual_seed(1)
    model = VAE(ModelConfig()).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator(device=device).manual_seed(1)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        progress = EpochProgress.begin(len(train_split), gen)
        for idx in progress.remaining(batch_size):
            train_step(model, opt, train_split.pixels(idx), gen, 0.0, progress)
        progress.check_finite(epoch)
        sync(device)
        train_s = time.perf_counter() - t0
        test_loss = evaluate(model, test_split, seed=1)["loss"]
        rows.append({"epoch": epoch, "train_s": train_s, "total_s": time.perf_counter() - t0, "test_loss": test_loss})
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def summary(name: str, rows: list[dict], n_train: int) -> dict:
    train_s = sum(r["train_s"] for r in rows) / len(rows)
    total_s = sum(r["total_s"] for r in rows) / len(rows)
    elapsed, reached = 0.0, None
    for r in rows:
        elapsed += r["total_s"]
        if reached is None and r["test_loss"] <= TARGET_NATS:
            reached = elapsed
    print(f"{name:<10} {train_s:8.2f} s/epoch train  {total_s:8.2f} s/epoch train+test  "
          f"{n_train / train_s:9.0f} samples/s  final test {rows[-1]['test_loss']:8.3f} nats  "
          f"time to {TARGET_NATS:.0f} nats: " + (f"{reached:.1f} s" if reached else "not reached"))
    return {"train_s": train_s, "total_s": total_s, "final": rows[-1]["test_loss"], "to_target": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    n_train = len(datasets.MNIST(args.data, train=True))
    ref = summary("reference", run_reference(args.data, args.epochs, device), n_train)
    ours = summary("ours", run_ours(args.data, args.epochs, device), n_train)
    same = abs(ref["final"] - ours["final"]) <= 0.5
    print(f"ratio (reference / ours): {ref['train_s'] / ours['train_s']:.2f}x train, "
          f"{ref['total_s'] / ours['total_s']:.2f}x train+test; final test losses "
          + ("agree within 0.5 nats" if same else "DIFFER by more than 0.5 nats: the ratio does not count"))


if __name__ == "__main__":
    main()
