"""The new data that `evaluate.py --against` scores: a split of the run, its held-out classes, another MNIST-class
dataset, your own folder or .npz, each optionally transformed, as the run's model sees images."""
from __future__ import annotations

from pathlib import Path

import torch

from vae.config.schema import CLASS_NAMES, Config
from vae.data.images import centre_crop, load_images
from vae.data.load import NEW_DRAW, load_data, of_classes, read_splits, trained_classes
from vae.data.mnist import load_dataset
from vae.data.split import Split
from vae.errors import UserError
from vae.evaluate.analyze import fixed_split

SPLITS = ("test", "val", "train")  # the run's own splits, as its config reads them


def _rotate(x, gen):
    if x.shape[-1] != x.shape[-2]:
        raise UserError(f"--transform rot90 needs square images, these are {x.shape[-2]}x{x.shape[-1]}")
    return x.rot90(1, dims=(-2, -1))


def _noise(x, gen):
    return torch.randint(0, 256, x.shape, generator=gen, dtype=torch.uint8)


def _constant(x, gen):
    return torch.randint(0, 256, (len(x), 1, 1, 1), generator=gen, dtype=torch.uint8).expand(x.shape).contiguous()


# --transform NAME: uint8 images (N, C, H, W) on the CPU -> the same shape, noise drawn from a seeded generator
TRANSFORMS = {
    "hflip": lambda x, gen: x.flip(-1),  # mirrored left to right
    "vflip": lambda x, gen: x.flip(-2),  # upside down
    "rot90": _rotate,  # a quarter turn anticlockwise
    "invert": lambda x, gen: 255 - x,  # white on black becomes black on white
    "noise": _noise,  # every pixel uniform in 0..255, independently
    "constant": _constant,  # each image one uniform grey level
}


def run_split(cfg: Config, name: str, device: torch.device, binarized: bool) -> Split:
    """The run's split `name` as its config reads it (of data.classes): binarized as evaluations measure it, or
    not `binarized`."""
    splits = load_data(cfg.data, device, binarized)
    split = fixed_split(splits, cfg, name) if binarized else getattr(splits, name)
    if split is None:
        raise UserError(f"--against {name}: the run has no validation split (data.val_size=0)")
    return split


def heldout(cfg: Config, device: torch.device) -> Split:
    """The images of the classes the run did not train on, from the file of score.reference (test: the test
    images; train or val: the training images)."""
    if not cfg.data.classes:
        raise UserError("--against heldout needs a run trained on some classes only (data.classes): this one "
                        "trained on every class")
    train, test = read_splits(cfg.data, device)
    others = tuple(c for c in range(len(train.classes)) if c not in trained_classes(cfg.data, train.classes))
    if not others:
        raise UserError("--against heldout: data.classes names every class, so none is held out")
    return of_classes(test if cfg.score.reference == "test" else train, others, "--against heldout")


def other_dataset(cfg: Config, name: str, device: torch.device) -> Split:
    """The test images of an MNIST-class dataset found under data.root, at the run's data.image_size."""
    test = load_dataset(cfg.data.root, cfg.data.download, device, name)[1]
    size = cfg.data.image_size
    return Split(centre_crop(test.images, size), test.labels, test.classes) if size and size != 28 else test


def own_images(cfg: Config, path: Path) -> Split:
    """Every image of a folder or a .npz (all its splits), at the run's data.image_size."""
    kind = "folder" if path.is_dir() else "npz"
    splits = load_images(kind, str(path), cfg.data.image_size)
    return Split(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]), splits[0].classes)


def read_source(cfg: Config, against: str, device: torch.device) -> Split:
    """What `--against` names, as uint8 images before any transform or binarization."""
    if against in SPLITS:
        return run_split(cfg, against, device, binarized=False)
    if against == "heldout":
        return heldout(cfg, device)
    if against in CLASS_NAMES:
        return other_dataset(cfg, against, device)
    path = Path(against).expanduser()
    if path.is_dir() or path.suffix.lower() == ".npz" and path.is_file():
        return own_images(cfg, path)
    raise UserError(f"--against {against}: not a split ({', '.join(SPLITS)}), heldout, a dataset "
                    f"({', '.join(CLASS_NAMES)}), a folder of images or a .npz file")


def fit_to(split: Split, shape: tuple[int, int, int], what: str) -> Split:
    """The images in the model's (C, H, W) `shape`: grey ones repeated for a colour model; any other mismatch is
    refused."""
    c, h, w = split.shape
    if (h, w) == shape[1:] and c == 1 and shape[0] == 3:
        return Split(split.images.expand(-1, 3, -1, -1).contiguous(), split.labels, split.classes)
    if split.shape != shape:
        raise UserError(f"{what} are {h}x{w} images of {c} channel(s), the model's are {shape[1]}x{shape[2]} of "
                        f"{shape[0]}: score images of the model's size (data.image_size resizes your own)")
    return split


def new_data(cfg: Config, against: str, transform: str | None, shape: tuple[int, int, int],
             device: torch.device) -> Split:
    """The images `--against` names, transformed by `--transform`, in the model's `shape`, binarized as the run's
    data are (a draw seeded by data.seed)."""
    if transform and transform not in TRANSFORMS:
        raise UserError(f"--transform {transform}: not one of {', '.join(TRANSFORMS)}")
    if against in SPLITS and not transform:  # the images the run itself measures, binarized as it has them
        return run_split(cfg, against, device, binarized=True)
    split = fit_to(read_source(cfg, against, device), shape, f"the images of --against {against}")
    if transform:
        gen = torch.Generator().manual_seed(cfg.eval.seed)
        images = TRANSFORMS[transform](split.images.cpu(), gen).to(split.images.device)
        split = Split(images, split.labels, split.classes)
    return split if cfg.data.binarize == "none" else split.binarized(cfg.data.seed + NEW_DRAW)


def source_name(against: str, transform: str | None) -> str:
    """A folder name for what was scored: `fashion_mnist`, `test-hflip`, `my_digits` (a path's last part)."""
    name = against if against in (*SPLITS, "heldout", *CLASS_NAMES) else Path(against).expanduser().resolve().stem
    return f"{name}-{transform}" if transform else name
