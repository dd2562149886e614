"""Pictures: image grids (torchvision) and loss curves (matplotlib). Nothing here trains."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from vae.files import atomic_write  # noqa: E402

IMAGE = (1, 28, 28)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Images (N, 784) or (N, 1, 28, 28) in [0, 1] as one PNG grid, nrow per row."""
    grid = make_grid(images.detach().float().cpu().reshape(-1, *IMAGE), nrow=nrow, padding=2,
                     pad_value=0.5)
    atomic_write(path, lambda f: save_image(grid, f, format="png"))


def save_pairs(originals: torch.Tensor, reconstructions: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Rows of originals, each directly above the row of their reconstructions."""
    nrow = min(nrow, len(originals))
    n = len(originals) // nrow * nrow
    o = originals[:n].reshape(-1, nrow, *IMAGE)
    r = reconstructions[:n].reshape(-1, nrow, *IMAGE)
    save_grid(torch.stack([o, r], dim=1).reshape(-1, *IMAGE), path, nrow=nrow)


def plot_loss_curves(rows: list[dict], path: Path) -> None:
    """Train and test loss, reconstruction and KL (nats per example) against epoch."""
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (term, title) in zip(axes, [("loss", "negative ELBO"), ("recon", "reconstruction"),
                                        ("kl", "KL(q(z|x) || p(z))")]):
        for split, style in (("train", "-"), ("test", "--")):
            ax.plot(epochs, [r[f"{split}_{term}"] for r in rows], style, marker=".", label=split)
        ax.set(title=title, xlabel="epoch", ylabel="nats per example")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
