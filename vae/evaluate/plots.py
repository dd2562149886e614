"""Pictures: image grids (torchvision) and plots (matplotlib). Nothing here trains."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from vae.files import atomic_write  # noqa: E402

MAX_LABELLED = 40  # a figure names at most this many configs (a comparison may hold hundreds)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Images (N, C, H, W) in [0, 1] as one PNG grid, nrow per row."""
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=0.5)
    atomic_write(path, lambda f: save_image(grid, f, format="png"))


def save_pairs(originals: torch.Tensor, reconstructions: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Rows of originals (N, C, H, W), each directly above the row of their reconstructions."""
    nrow = min(nrow, len(originals))
    n = len(originals) // nrow * nrow
    o = originals[:n].reshape(-1, nrow, *originals.shape[1:])
    r = reconstructions[:n].reshape(-1, nrow, *originals.shape[1:])
    save_grid(torch.stack([o, r], dim=1).flatten(0, 2), path, nrow=nrow)


def plot_loss_curves(rows: list[dict], path: Path) -> None:
    """Train/validation/test negative ELBO, distortion and rate (nats per example), and active units,
    by epoch (validation where the rows have it)."""
    epochs = [r["epoch"] for r in rows]
    splits = [("train", "-"), *([("val", ":")] if "val_loss" in rows[-1] else []), ("test", "--")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (term, title) in zip(axes, [("loss", "negative ELBO"), ("recon", "distortion (reconstruction)"),
                                        ("kl", "rate KL(q(z|x) || p(z))")]):
        for split, style in splits:
            ax.plot(epochs, [r.get(f"{split}_{term}", math.nan) for r in rows], style, marker=".", label=split)
        ax.set(title=title, ylabel="nats per example")
        ax.legend()
    axes[3].plot(epochs, [r["test_active_units"] for r in rows], "--", marker=".", color="C1", label="test")
    axes[3].set(title="active units (Var_x E[z_d] > 0.01)", ylim=(0, None))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def save_labeled_rows(images: torch.Tensor, row_labels: list[str], path: Path, title: str) -> None:
    """Images (R, N, C, H, W) as an R x N grid with a label at the left of each row."""
    rows, cols, height = *images.shape[:2], images.shape[-2]
    grid = make_grid(images.detach().float().cpu().flatten(0, 1), nrow=cols, padding=2, pad_value=0.5)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * cols, 0.6 + 0.45 * rows))
    ax.imshow(grid.permute(1, 2, 0).numpy(), vmin=0, vmax=1)  # make_grid gives 3 channels, grey ones repeated
    ax.set_yticks([2 + (height + 2) * r + height // 2 for r in range(rows)], row_labels)
    ax.set_xticks([])
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_kl_per_dim(kl: list[float], active: list[bool], path: Path) -> None:
    """Average KL of each latent dim (nats), largest first; inactive dims greyed."""
    order = sorted(range(len(kl)), key=lambda d: -kl[d])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(kl)), 3.8))
    ax.bar(range(len(kl)), [kl[d] for d in order], color=["C0" if active[d] else "0.7" for d in order])
    ax.set_xticks(range(len(kl)), [str(d) for d in order], fontsize=7)
    ax.set(title=f"KL per latent dimension ({sum(active)} of {len(kl)} active)",
           xlabel="latent dimension (sorted)", ylabel="nats per example")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)


def plot_latent_scatter(points: torch.Tensor, labels: torch.Tensor, axis_names: tuple[str, str],
                        class_names: tuple[str, ...], path: Path) -> None:
    """2-D points (N, 2) of the posterior means, coloured by class (the first MAX_LABELLED classes named)."""
    points, labels, n = points.cpu().numpy(), labels.cpu().numpy(), len(class_names)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10" if n <= 10 else "turbo", vmin=-0.5,
                    vmax=max(n, 10) - 0.5, s=3, alpha=0.7)  # up to 10 classes, tab10's colours in order
    if n > 1:
        shown = range(min(n, MAX_LABELLED))
        bar = fig.colorbar(sc, ax=ax, ticks=list(shown), label="class")
        bar.ax.set_yticklabels([class_names[c] for c in shown])
    ax.set(title="posterior means of the evaluated images", xlabel=axis_names[0], ylabel=axis_names[1])
    fig.tight_layout()
    save_figure(fig, path)


def plot_nats_histogram(series: dict[str, torch.Tensor], path: Path) -> None:
    """Overlaid histograms of per-example nats (e.g. negative ELBO and IWAE NLL)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    series = {name: values.double().cpu().numpy() for name, values in series.items()}
    low, high = min(v.min() for v in series.values()), max(v.max() for v in series.values())
    bins = torch.linspace(low, high, 81).tolist()  # shared bins
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (mean {values.mean():.2f})")
    ax.set(title="per-example nats", xlabel="nats", ylabel="examples")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_rate_distortion(rates: list[dict], distortions: list[dict], labels: list[str], best: int, marked: str,
                         path: Path, front: list[int] = ()) -> None:
    """Distortion against rate, one point per config ({"mean", "std"} each), with iso-ELBO diagonals
    D + R = c; the config `best` starred, with the legend `marked`; the configs `front` (a Pareto front)
    ringed and joined in the order of their rates."""
    fig, ax = plt.subplots(figsize=(7, 5.5))
    r, d = [x["mean"] for x in rates], [x["mean"] for x in distortions]
    ax.errorbar(r, d, xerr=[x["std"] for x in rates], yerr=[x["std"] for x in distortions], fmt="o", capsize=3)
    (r0, r1), (d0, d1) = ax.get_xlim(), ax.get_ylim()
    for c in MaxNLocator(6).tick_values(r0 + d0, r1 + d1):  # the lines negative ELBO = D + R = c in the box
        lo, hi = max(r0, c - d1), min(r1, c - d0)
        if lo < hi:
            ax.plot([lo, hi], [c - lo, c - hi], color="grey", lw=0.6, ls=":")
            ax.annotate(f"−ELBO {c:g}", ((lo + hi) / 2, c - (lo + hi) / 2), fontsize=7, color="grey")
    ax.set_xlim(r0, r1)
    ax.set_ylim(d0, d1)
    for i, text in enumerate(labels):  # with many points, only the starred one is named
        if len(labels) <= MAX_LABELLED or i == best:
            ax.annotate(text, (r[i], d[i]), textcoords="offset points", xytext=(5, 5), fontsize=8,
                        fontweight="bold" if i == best else "normal")
    if front:
        on = sorted(front, key=lambda i: r[i])
        ax.plot([r[i] for i in on], [d[i] for i in on], "o--", ms=11, mfc="none", color="tab:green",
                label="Pareto front on validation")
    ax.plot([r[best]], [d[best]], "*", ms=16, color="tab:red", label=marked)
    ax.set_xlabel("rate KL(q(z|x) ‖ p(z)), nats")
    ax.set_ylabel("distortion −log p(x|z), nats")
    ax.legend()
    save_figure(fig, path)


def plot_rate_split(labels: list[str], information: list[float], marginal_kl: list[float], path: Path) -> None:
    """The rate of each config as stacked bars: I(x; z) below, KL(q(z) ‖ p(z)) above (bars numbered as the
    comparison's rows, from 1, when there are too many to name)."""
    if len(labels) > MAX_LABELLED:
        labels = [str(i + 1) for i in range(len(labels))]
    fig, ax = plt.subplots(figsize=(min(max(5, 0.8 * min(len(labels), MAX_LABELLED) + 2), 40), 4))
    ax.bar(labels, information, label="I(x; z)")
    ax.bar(labels, marginal_kl, bottom=information, label="KL(q(z) ‖ p(z))")
    ax.set_ylabel("nats")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend()
    save_figure(fig, path)


def plot_swept(key: str, values: list[float], nll: list[dict], path: Path) -> None:
    """NLL ({"mean", "std"} per value) against the one swept key (log axis when it spans a decade)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([values[i] for i in order], [nll[i]["mean"] for i in order], yerr=[nll[i]["std"] for i in order],
                fmt="o-", capsize=3)
    if min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("NLL (IWAE), nats")
    save_figure(fig, path)
