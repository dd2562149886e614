"""The published reference: pytorch/examples vae/main.py's model, loss and train/test loop (its classic
Bernoulli cross-entropy + analytic KL version), as it runs there, with its epochs timed.

The only changes are that the data root, the epochs and the device are arguments instead of argparse
globals, and that the per-batch printing and the image saving are left out (the loss is still read
from the device every step, as the example does to print it).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class ReferenceVAE(nn.Module):
    """The example's VAE: 784-400-(20, 20) encoder with fc21/fc22 heads, 20-400-784 decoder, sigmoid outputs."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """Reconstruction + KL divergence losses summed over all elements and batch (Kingma & Welling, App. B)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_reference(root: str, epochs: int, device: torch.device) -> list[dict]:
    """The example's main loop: per epoch train(epoch) then test(epoch); one row of seconds and test loss each."""
    torch.manual_seed(1)
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    train_loader = DataLoader(datasets.MNIST(root, train=True, transform=transforms.ToTensor()),
                              batch_size=128, shuffle=True, **kwargs)
    test_loader = DataLoader(datasets.MNIST(root, train=False, transform=transforms.ToTensor()),
                             batch_size=128, shuffle=True, **kwargs)
    model = ReferenceVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()  # train(epoch)
        train_loss = 0
        for data, _ in train_loader:
            data = data.to(device)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        sync(device)
        train_s = time.perf_counter() - t0
        model.eval()  # test(epoch)
        test_loss = 0
        with torch.no_grad():
            for data, _ in test_loader:
                data = data.to(device)
                recon_batch, mu, logvar = model(data)
                test_loss += loss_function(recon_batch, data, mu, logvar).item()
        test_loss /= len(test_loader.dataset)
        rows.append({"epoch": epoch, "train_s": train_s, "total_s": time.perf_counter() - t0, "test_loss": test_loss})
    return rows
