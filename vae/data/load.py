"""The splits a config asks for: the dataset's train and test images (a share of its images held out
as the test split when it has none), a validation split held out of the training images, and their
binarization."""
from __future__ import annotations

from typing import NamedTuple

import torch

from vae.config.schema import CLASS_NAMES, DataConfig, class_index
from vae.data.images import centre_crop, load_images
from vae.data.mnist import load_dataset
from vae.data.split import Split
from vae.errors import UserError

# data.seed + these seed the fixed binarizations of the training and validation images (the test
# images' is data.seed itself), the choice of the test images where the data has no test split, and the
# binarization of new images scored against a run
TRAIN_DRAW, VAL_DRAW, TEST_PICK, NEW_DRAW = 1, 2, 3, 4


class Splits(NamedTuple):
    train: Split
    val: Split | None  # held out of the training images by data.val_size; None when it is 0
    test: Split

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return self.train.shape

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def held_out(split: Split, size: int, seed: int, key: str) -> tuple[Split, Split]:
    """(`size` examples chosen by a permutation seeded by `seed`, the rest), each in the original order;
    `key` is the config key that asked, named when nothing would be left."""
    if size >= len(split):
        raise UserError(f"{key} leaves no training images: {size} of {len(split)} held out")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(order[:size].sort().values), split.subset(order[size:].sort().values)


def trained_classes(cfg: DataConfig, classes: tuple[str, ...]) -> tuple[int, ...]:
    """The indices of data.classes among `classes` (those the data was read with); every index when it is empty."""
    where = cfg.dataset if cfg.dataset in CLASS_NAMES else cfg.path
    return tuple(class_index(c, classes, where, key="data.classes") for c in cfg.classes) or tuple(range(len(classes)))


def of_classes(split: Split, classes: tuple[int, ...], key: str) -> Split:
    """The examples of `split` whose label is one of `classes`; `key` is the config key that asked, named when none
    is left."""
    kept = split.subset(torch.isin(split.labels, torch.tensor(classes, device=split.labels.device)).nonzero()[:, 0])
    if not len(kept):
        raise UserError(f"{key} leaves no images in a split of {len(split)}")
    return kept


def read_splits(cfg: DataConfig, device: torch.device) -> tuple[Split, Split]:
    """The dataset's (train, test) splits on `device`, resized when data.image_size asks (every class)."""
    if cfg.dataset in CLASS_NAMES:
        train, test = load_dataset(cfg.root, cfg.download, device, cfg.dataset)
        if cfg.image_size and train.shape[1:] != (cfg.image_size, cfg.image_size):
            train, test = (Split(centre_crop(s.images, cfg.image_size), s.labels, s.classes) for s in (train, test))
        return train, test
    splits = load_images(cfg.dataset, cfg.path, cfg.image_size)  # resized as they are read: they may differ in size
    if len(splits) == 1:
        n_test = max(1, round(cfg.test_fraction * len(splits[0])))
        splits = held_out(splits[0], n_test, cfg.seed + TEST_PICK, f"data.test_fraction={cfg.test_fraction:g}")[::-1]
    train, test = (Split(s.images.to(device), s.labels.to(device), s.classes) for s in splits)
    return train, test


def load_data(cfg: DataConfig, device: torch.device, binarized: bool = True) -> Splits:
    """The splits as the config asks for them.

    Only the images of data.classes, when it names some. data.val_size training images, chosen by a permutation
    seeded by data.seed, become the validation split. binarize=static draws every split once; dynamic draws the
    test and validation splits once and the training images anew each time they are used (in the training loop),
    so evaluation numbers compare between runs. The draws are seeded by data.seed. Not `binarized`: the splits'
    intensities, whatever data.binarize says.
    """
    train, test = read_splits(cfg, device)
    if cfg.classes:
        keep = trained_classes(cfg, train.classes)
        train, test = (of_classes(s, keep, f"data.classes={list(cfg.classes)}") for s in (train, test))
    val = None
    if cfg.val_size:
        val, train = held_out(train, cfg.val_size, cfg.seed, f"data.val_size={cfg.val_size}")
    if cfg.binarize == "none" or not binarized:
        return Splits(train, val, test)
    return Splits(train.binarized(cfg.seed + TRAIN_DRAW) if cfg.binarize == "static" else train,
                  val.binarized(cfg.seed + VAL_DRAW) if val is not None else None, test.binarized(cfg.seed))
