"""MNIST, Fashion-MNIST or KMNIST through torchvision, held whole as one uint8 tensor on the training device;
its splits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torchvision.datasets import KMNIST, MNIST, FashionMNIST

from vae.config import DataConfig
from vae.errors import UserError

# data.seed + these seed the fixed binarizations of the training and validation images (the test
# images' is data.seed itself)
TRAIN_DRAW, VAL_DRAW = 1, 2
IMAGE_SHAPE = (1, 28, 28)
PIXELS = 28 * 28
# data.dataset -> torchvision's class; each reads <root>/<class name>/raw/ with the same four file names
DATASETS = {"mnist": MNIST, "fashion_mnist": FashionMNIST, "kmnist": KMNIST}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8, on the training device
    labels: torch.Tensor  # (N,) int64, on the training device

    def __len__(self) -> int:
        return self.images.shape[0]

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """Intensities in [0, 1] of the images at `index`, flattened: (B, 784) float32."""
        return self.images[index].reshape(-1, PIXELS).float().div_(255)

    def subset(self, index: torch.Tensor) -> Split:
        """The examples at `index`, in that order."""
        index = index.to(self.images.device)
        return Split(self.images[index], self.labels[index])

    def binarized(self, seed: int) -> Split:
        """Each pixel drawn once as Bernoulli(intensity), with its own seeded generator (on the CPU,
        so every device gets the same images): values 0 or 255."""
        probs = self.images.cpu().float().div_(255)
        drawn = binarize(probs, torch.rand(probs.shape, generator=torch.Generator().manual_seed(seed)))
        return Split(drawn.mul_(255).to(torch.uint8).to(self.images.device), self.labels)


def binarize(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """x ~ Bernoulli(probs) elementwise, as 1[u < p] with uniform u ~ U[0, 1) of probs' shape: the
    distribution that torch.bernoulli draws, three times faster on the CPU."""
    return (uniform < probs).float()


def _read(root: Path, dataset: str, train: bool, download: bool) -> MNIST:
    kind = DATASETS[dataset]
    name, raw = kind.__name__, root / kind.__name__ / "raw"
    missing = [f for f in RAW_FILES if not (raw / f).is_file()]
    try:
        if missing and download:
            try:
                return kind(str(root), train=train, download=True)
            except Exception as e:  # noqa: BLE001 - network errors come in many types
                lines = str(e).strip().splitlines() or [type(e).__name__]
                why = lines[-1].strip("<>")  # torchvision ends with the last mirror's error
                raise UserError(
                    f"{name} files not found in {raw.resolve()} and the download failed ({why}). "
                    f"Put {', '.join(RAW_FILES)} (or their .gz archives) there, "
                    f"or point data.root=DIR at a folder holding {name}/raw/") from None
        if missing:
            raise UserError(
                f"{name} files not found in {raw.resolve()} (missing {', '.join(missing)}). "
                f"Put the files there, point data.root=DIR at a folder holding {name}/raw/, "
                f"or set data.download=true on a machine with internet")
        return kind(str(root), train=train, download=False)
    except (AssertionError, RuntimeError, ValueError, IndexError, KeyError, OSError) as e:
        raise UserError(f"could not read the {name} files in {raw.resolve()}: "
                        f"{str(e).strip() or type(e).__name__} (corrupt or truncated?)") from None


def _to_split(ds: MNIST, device: torch.device) -> Split:
    images, labels, name = ds.data, ds.targets, type(ds).__name__
    where = Path(ds.raw_folder).resolve()
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE[1:]:
        raise UserError(f"{name} images in {where} must be 28x28 uint8, got {tuple(images.shape)} "
                        f"{images.dtype}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise UserError(f"{name} in {where}: {images.shape[0]} images but {labels.numel()} labels")
    if images.shape[0] == 0 or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{name} in {where}: empty split or labels outside 0..9")
    return Split(images.to(device), labels.long().to(device))


def load_dataset(root: str | Path, download: bool, device: torch.device, dataset: str = "mnist") -> tuple[Split, Split]:
    """(train, test) splits of `dataset` (a key of DATASETS) found under `root`/<its folder>/raw, on `device`."""
    root = Path(root).expanduser()
    return tuple(_to_split(_read(root, dataset, train, download), device) for train in (True, False))


class Splits(NamedTuple):
    train: Split
    val: Split | None  # held out of the training images by data.val_size; None when it is 0
    test: Split


def load_data(cfg: DataConfig, device: torch.device) -> Splits:
    """The splits as the config asks for them.

    data.val_size training images, chosen by a permutation seeded by data.seed, become the
    validation split. binarize=static draws every split once; dynamic draws the test and
    validation splits once and the training images anew each time they are used (in the training
    loop), so evaluation numbers compare between runs. The draws are seeded by data.seed.
    """
    train, test = load_dataset(cfg.root, cfg.download, device, cfg.dataset)
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise UserError(f"data.val_size={cfg.val_size} leaves no training images: the training split "
                            f"has {len(train)}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
        val, train = train.subset(order[:cfg.val_size].sort().values), train.subset(order[cfg.val_size:].sort().values)
    if cfg.binarize == "none":
        return Splits(train, val, test)
    return Splits(train.binarized(cfg.seed + TRAIN_DRAW) if cfg.binarize == "static" else train,
                  val.binarized(cfg.seed + VAL_DRAW) if val is not None else None, test.binarized(cfg.seed))
