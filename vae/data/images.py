"""Your own images: a folder of PNG/JPEG/... files (class subfolders give labels, as torchvision's `ImageFolder`
has them) or a NumPy .npz of uint8 arrays, as (train, test) splits of (N, C, H, W) images with C = 1 or 3."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from vae.data.split import Split
from vae.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # as torchvision's ImageFolder, read by Pillow
GREY = ("1", "L", "LA", "I", "F")  # Pillow's modes of grey images
UNLABELLED = ("all",)  # the one class of images without labels


class Images(NamedTuple):
    """A split as read: its images, each (C, H, W) uint8 (a list from files, one (N, C, H, W) tensor from an
    array), their labels (N,), and the file or array element each came from."""

    images: list[torch.Tensor] | torch.Tensor
    labels: torch.Tensor
    sources: list[str]


def read_image(path: Path) -> torch.Tensor:
    """One file, read by Pillow, as (C, H, W) uint8: C = 1 for grey (with or without alpha), else 3 (RGB; alpha
    and palettes resolved); 16-bit grey scaled to 8 bits."""
    try:
        with Image.open(path) as image:
            if image.mode.startswith("I;16"):
                pixels = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
            elif image.mode in GREY:
                pixels = np.asarray(image.convert("L"))
            else:
                pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not read the image {path}: {reason[:160]} (corrupt, or not an image?)") from None
    tensor = torch.from_numpy(pixels.copy())
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def read_folder(folder: Path, classes: tuple[str, ...] | None = None) -> tuple[Images, tuple[str, ...]]:
    """The images of `folder`: one class per subfolder (sorted by name), or, without subfolders, the images in it
    as one unlabelled class. `classes`, when given, are those the folder must have (the training folder's)."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = tuple(p.name for p in subfolders) if subfolders else UNLABELLED
    if classes is not None and found != classes:
        raise UserError(f"the classes of {folder} ({', '.join(found)}) do not match the training images' "
                        f"({', '.join(classes)})")
    files = [(f, c) for c, sub in enumerate(subfolders) for f in image_files(sub)] if subfolders else \
        [(f, 0) for f in image_files(folder)]
    if not files:
        where = "its class subfolders" if subfolders else "it"
        raise UserError(f"{folder} holds no images ({', '.join(EXTENSIONS)} files in {where})")
    empty = [sub.name for sub in subfolders if not image_files(sub)]
    if empty:
        raise UserError(f"the class folder(s) {', '.join(empty)} in {folder} hold no images")
    labels = torch.tensor([c for _, c in files])
    return Images([read_image(f) for f, _ in files], labels, [str(f) for f, _ in files]), found


def read_npz(path: Path) -> tuple[list[Images], tuple[str, ...]]:
    """The arrays of a .npz: x (N, H, W) or (N, H, W, C) uint8 and optional y (N,) integer labels; or x_train
    and x_test (with y_train and y_test) for a split of its own. One split, or two."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array, not named arrays (save them with numpy.savez)")
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"could not read {path} as a NumPy .npz: {str(e).strip()[:160] or type(e).__name__}") from None
    names = [("x_train", "y_train"), ("x_test", "y_test")] if "x_train" in arrays else [("x", "y")]
    if names[0][0] not in arrays or (len(names) == 2 and "x_test" not in arrays):
        raise UserError(f"{path} must hold an array x (or x_train and x_test); it holds "
                        f"{', '.join(arrays) or 'nothing'}")
    if any(y in arrays for _, y in names) and not all(y in arrays for _, y in names):
        raise UserError(f"{path}: labels for some splits and not others ({', '.join(y for _, y in names)})")
    splits = [_array_split(path, x, arrays[x], arrays.get(y), y) for x, y in names]
    if names[0][1] not in arrays:
        return splits, UNLABELLED
    return splits, tuple(str(c) for c in range(max(int(s.labels.max()) for s in splits) + 1))


def _array_split(path: Path, name: str, x: np.ndarray, y: np.ndarray | None, y_name: str) -> Images:
    if x.dtype != np.uint8:
        raise UserError(f"{path}: {name} must be uint8 (0..255), got {x.dtype}")
    if not (x.ndim == 3 or x.ndim == 4 and x.shape[3] in (1, 3)) or 0 in x.shape[:3]:
        raise UserError(f"{path}: {name} must be N x H x W or N x H x W x C with C = 1 or 3 and N, H, W > 0, "
                        f"got {x.shape}")
    images = torch.from_numpy(x if x.ndim == 4 else x[..., None]).permute(0, 3, 1, 2)  # (N, C, H, W)
    if y is None:
        labels = torch.zeros(len(x), dtype=torch.long)
    elif y.shape != (len(x),) or y.dtype.kind not in "iu" or len(y) and y.min() < 0:
        raise UserError(f"{path}: {y_name} must be {len(x)} integer labels >= 0 (one per image of {name}), "
                        f"got {y.shape} {y.dtype}")
    else:
        labels = torch.from_numpy(y.astype(np.int64))
    return Images(images, labels, [f"{path}:{name}[{i}]" for i in range(len(x))])


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(..., C, H, W) resized (antialiased, the shorter side to `size`) and centre-cropped to size x size."""
    return TF.center_crop(TF.resize(images, [size], antialias=True), [size, size])


def to_split(read: Images, size: int, channels: int, classes: tuple[str, ...]) -> Split:
    """The images as one (N, C, H, W) uint8 tensor with C = `channels` (grey repeated beside colour), resized
    and centre-cropped to size x size when `size`; without it they must all be of one size."""
    images = read.images
    if isinstance(images, torch.Tensor):  # an array: one size already
        images = centre_crop(images, size) if size else images
        return Split(images.expand(-1, channels, -1, -1).contiguous(), read.labels, classes)
    images = [centre_crop(im, size) for im in images] if size else images
    first = images[0].shape[1:]
    other = next((i for i, im in enumerate(images) if im.shape[1:] != first), None)
    if other is not None:
        raise UserError(f"images of different sizes: {read.sources[0]} is {first[0]}x{first[1]}, "
                        f"{read.sources[other]} is {images[other].shape[1]}x{images[other].shape[2]}: set "
                        f"data.image_size=S to resize and centre-crop them all to S x S")
    return Split(torch.stack([im.expand(channels, -1, -1) for im in images]), read.labels, classes)


def channels_of(*splits: Images) -> int:
    """1 when every image is grey, else 3."""
    return max(s.images.shape[1] if isinstance(s.images, torch.Tensor) else max(im.shape[0] for im in s.images)
               for s in splits)


def load_images(dataset: str, path: str | None, size: int) -> list[Split]:
    """`folder` or `npz` at `path`: its splits, train and test when it has them, else the one."""
    if not path:
        what = "folder" if dataset == "folder" else ".npz file"
        raise UserError(f"data.dataset={dataset} needs data.path: the {what} of images")
    where = Path(path).expanduser()
    if dataset == "folder":
        if not where.is_dir():
            raise UserError(f"data.path={path}: no such folder")
        if (where / "train").is_dir() and (where / "test").is_dir():
            train, classes = read_folder(where / "train")
            read = [train, read_folder(where / "test", classes)[0]]
        else:
            first, classes = read_folder(where)
            read = [first]
    else:
        if not where.is_file():
            raise UserError(f"data.path={path}: no such file")
        read, classes = read_npz(where)
    channels = channels_of(*read)
    splits = [to_split(r, size, channels, classes) for r in read]
    if len({s.shape for s in splits}) > 1:
        raise UserError(f"the training images are {splits[0].shape[1]}x{splits[0].shape[2]} and the test images "
                        f"{splits[1].shape[1]}x{splits[1].shape[2]}: set data.image_size=S to bring both to S x S")
    return splits
