"""MNIST, Fashion-MNIST or KMNIST through torchvision's own classes: their IDX files -> (train, test) splits."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import KMNIST, MNIST, FashionMNIST

from vae.config.schema import CLASS_NAMES
from vae.data.split import MNIST_SHAPE, Split
from vae.errors import UserError

# data.dataset -> torchvision's class; each reads <root>/<class name>/raw/ with the same four file names
DATASETS = {"mnist": MNIST, "fashion_mnist": FashionMNIST, "kmnist": KMNIST}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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


def _to_split(ds: MNIST, device: torch.device, classes: tuple[str, ...]) -> Split:
    images, labels, name = ds.data, ds.targets, type(ds).__name__
    where = Path(ds.raw_folder).resolve()
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != MNIST_SHAPE[1:]:
        raise UserError(f"{name} images in {where} must be 28x28 uint8, got {tuple(images.shape)} "
                        f"{images.dtype}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise UserError(f"{name} in {where}: {images.shape[0]} images but {labels.numel()} labels")
    if images.shape[0] == 0 or labels.min() < 0 or labels.max() > 9:
        raise UserError(f"{name} in {where}: empty split or labels outside 0..9")
    return Split(images.unsqueeze(1).to(device), labels.long().to(device), classes)  # (N, 1, 28, 28)


def load_dataset(root: str | Path, download: bool, device: torch.device, dataset: str = "mnist") -> tuple[Split, Split]:
    """(train, test) splits of `dataset` (a key of DATASETS) found under `root`/<its folder>/raw, on `device`."""
    root = Path(root).expanduser()
    return tuple(_to_split(_read(root, dataset, train, download), device, CLASS_NAMES[dataset])
                 for train in (True, False))
