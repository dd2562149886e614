"""Your own images: a folder of PNG/JPEG/... files (class subfolders give labels, as torchvision's `ImageFolder`
has them) or a NumPy .npz of uint8 arrays, as (train, test) splits of (N, C, H, W) images with C = 1 or 3.

Every size the data declare is bounded before memory is allocated for it: the pixels of each image (from its
header) and of each array (from its .npy header, checked against the bytes the archive holds), their sum against
the memory available, the number of files, class folders and label values."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from vae.data import npz
from vae.data.split import Split
from vae.device import available_bytes, gib
from vae.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # as torchvision's ImageFolder, read by Pillow
GREY = ("1", "L", "LA", "I", "F")  # Pillow's modes of grey images
UNLABELLED = ("all",)  # the one class of images without labels
# Pillow warns of a "decompression bomb" above ~89 million pixels; a 48-megapixel photo still fits
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_FILES = 1_000_000  # image files of a folder, train and test together: each costs ~2 KB beside its pixels
MAX_CLASSES = 10_000  # class folders, and labels 0..9,999 of a .npz: a label is a class index, and each is a class


class Images(NamedTuple):
    """A split as read: its images, each (C, H, W) uint8 (a list from files, one (N, C, H, W) tensor from an
    array), their labels (N,), and the file each came from (a folder's; none for an array)."""

    images: list[torch.Tensor] | torch.Tensor
    labels: torch.Tensor
    sources: list[str]


@dataclass
class Budget:
    """What reading may still allocate: the memory available when it began, and MAX_FILES files. An image is
    charged from its header before it is decoded, an array from its header before it is read."""

    memory: int
    used: int = 0
    files: int = 0

    def take(self, nbytes: int, what: str) -> None:
        self.used += nbytes
        if self.used > self.memory:
            raise UserError(f"{what} take {in_bytes(self.used)} of memory, more than the {in_bytes(self.memory)} "
                            f"available to read them into")

    def count_file(self, folder: Path) -> None:
        self.files += 1
        if self.files > MAX_FILES:
            raise UserError(f"{folder}: more than {MAX_FILES:,} image files, the most a folder of images may hold "
                            f"here: save them as a .npz (data.dataset=npz)")


def in_bytes(nbytes: int) -> str:
    """Bytes in GiB, MiB or bytes: a small bound said as 0.00 GiB says nothing."""
    return gib(nbytes) if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes:,} bytes"


def opened_image(path: Path) -> Image.Image:
    """Pillow's lazy open (the header only), without Pillow's own bound on pixels: ours follows, naming the file."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_image(path: Path, budget: Budget) -> torch.Tensor:
    """One file, read by Pillow, as (C, H, W) uint8: C = 1 for grey (with or without alpha), else 3 (RGB; alpha
    and palettes resolved); 16-bit grey scaled to 8 bits. Its size is bounded from its header, before decoding."""
    try:
        with opened_image(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise UserError(f"the image {path} declares {width}x{height} pixels, more than the "
                                f"{MAX_IMAGE_PIXELS:,} an image may have here")
            grey = image.mode in GREY or image.mode.startswith("I;16")
            budget.take(width * height * (1 if grey else 3), f"the images read up to {path}")
            if image.mode.startswith("I;16"):
                pixels = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
            elif grey:
                pixels = np.asarray(image.convert("L"))
            else:
                pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not read the image {path}: {reason[:160]} (corrupt, or not an image?)") from None
    tensor = torch.from_numpy(pixels.copy())
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)


def class_folders(folder: Path) -> list[Path]:
    """The subfolders of `folder` (not hidden), sorted by name: at most MAX_CLASSES."""
    found = []
    for p in folder.iterdir():
        if not p.name.startswith(".") and p.is_dir():
            found.append(p)
            if len(found) > MAX_CLASSES:
                raise UserError(f"{folder} holds more than {MAX_CLASSES:,} class folders, the most it may have")
    return sorted(found)


def image_files(folder: Path, budget: Budget) -> list[Path]:
    """The image files of `folder`, sorted, counted against the budget's MAX_FILES as they are listed."""
    found = []
    for p in folder.iterdir():
        if p.suffix.lower() in EXTENSIONS and p.is_file():
            budget.count_file(folder)
            found.append(p)
    return sorted(found)


def read_folder(folder: Path, budget: Budget, classes: tuple[str, ...] | None = None
                ) -> tuple[Images, tuple[str, ...]]:
    """The images of `folder`: one class per subfolder (sorted by name), or, without subfolders, the images in it
    as one unlabelled class. `classes`, when given, are those the folder must have (the training folder's)."""
    subfolders = class_folders(folder)
    found = tuple(p.name for p in subfolders) if subfolders else UNLABELLED
    if classes is not None and found != classes:
        raise UserError(f"the classes of {folder} ({', '.join(found)}) do not match the training images' "
                        f"({', '.join(classes)})")
    listed = [image_files(sub, budget) for sub in subfolders or [folder]]
    files = [(f, c) for c, in_class in enumerate(listed) for f in in_class]
    if not files:
        where = "its class subfolders" if subfolders else "it"
        raise UserError(f"{folder} holds no images ({', '.join(EXTENSIONS)} files in {where})")
    empty = [sub.name for sub, in_class in zip(subfolders, listed) if not in_class]
    if empty:
        raise UserError(f"the class folder(s) {', '.join(empty)} in {folder} hold no images")
    labels = torch.tensor([c for _, c in files])
    return Images([read_image(f, budget) for f, _ in files], labels, [str(f) for f, _ in files]), found


def read_npz(path: Path, budget: Budget) -> tuple[list[Images], tuple[str, ...]]:
    """The arrays of a .npz: x (N, H, W) or (N, H, W, C) uint8 and optional y (N,) integer labels (class indices);
    or x_train and x_test (with y_train and y_test) for a split of its own. One split, or two. Each array is checked
    from its header before it is read."""
    with npz.opened(path) as archive:
        members = npz.arrays(archive)
        names = [("x_train", "y_train"), ("x_test", "y_test")] if "x_train" in members else [("x", "y")]
        if names[0][0] not in members or (len(names) == 2 and "x_test" not in members):
            raise UserError(f"{path} must hold an array x (or x_train and x_test); it holds "
                            f"{', '.join(members) or 'nothing'}")
        if any(y in members for _, y in names) and not all(y in members for _, y in names):
            raise UserError(f"{path}: labels for some splits and not others ({', '.join(y for _, y in names)})")
        headers = {key: npz.read_header(archive, members[key], path) for pair in names for key in pair
                   if key in members}
        for x, y in names:
            check_images(path, x, headers[x])
            if y in headers:
                check_labels(path, y, headers[y], headers[x].shape[0], x)
        budget.take(sum(h.nbytes for h in headers.values()), f"{path}: its arrays ({', '.join(headers)})")
        arrays = {key: npz.read_array(archive, header, path) for key, header in headers.items()}
    splits = [_array_split(path, arrays[x], arrays.get(y), y) for x, y in names]
    if names[0][1] not in arrays:
        return splits, UNLABELLED
    return splits, tuple(str(c) for c in range(max(int(s.labels.max()) for s in splits) + 1))


def check_images(path: Path, name: str, header: npz.Header) -> None:
    """An array of images as its header declares it: uint8, N x H x W (x C), each of at most MAX_IMAGE_PIXELS."""
    shape = header.shape
    if header.dtype != np.uint8:
        raise UserError(f"{path}: {name} must be uint8 (0..255), got {header.dtype}")
    if not (len(shape) == 3 or len(shape) == 4 and shape[3] in (1, 3)) or 0 in shape[:3]:
        raise UserError(f"{path}: {name} must be N x H x W or N x H x W x C with C = 1 or 3 and N, H, W > 0, "
                        f"got {shape}")
    if shape[1] * shape[2] > MAX_IMAGE_PIXELS:
        raise UserError(f"{path}: {name} holds images of {shape[1]}x{shape[2]} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} an image may have here")


def check_labels(path: Path, name: str, header: npz.Header, n: int, x_name: str) -> None:
    """Labels as their header declares them: one integer per image of `x_name`."""
    if header.shape != (n,) or header.dtype.kind not in "iu":
        raise UserError(f"{path}: {name} must be {n} integer labels >= 0 (one per image of {x_name}), got "
                        f"{header.shape} {header.dtype}")


def _array_split(path: Path, x: np.ndarray, y: np.ndarray | None, y_name: str) -> Images:
    images = torch.from_numpy(x if x.ndim == 4 else x[..., None]).permute(0, 3, 1, 2)  # (N, C, H, W)
    if y is None:
        return Images(images, torch.zeros(len(x), dtype=torch.long), [])
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= MAX_CLASSES:  # a label is its class's index, and the classes are 0..max(y)
        raise UserError(f"{path}: {y_name} holds the label {low if low < 0 else high}: labels must be class "
                        f"indices 0..{MAX_CLASSES - 1:,} (renumber them 0..K-1, e.g. with "
                        f"numpy.unique(y, return_inverse=True))")
    return Images(images, torch.from_numpy(y.astype(np.int64)), [])


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
    """`folder` or `npz` at `path`: its splits, train and test when it has them, else the one; read within the
    memory available when reading begins."""
    if not path:
        what = "folder" if dataset == "folder" else ".npz file"
        raise UserError(f"data.dataset={dataset} needs data.path: the {what} of images")
    where = Path(path).expanduser()
    budget = Budget(available_bytes(torch.device("cpu")))
    if dataset == "folder":
        if not where.is_dir():
            raise UserError(f"data.path={path}: no such folder")
        if (where / "train").is_dir() and (where / "test").is_dir():
            train, classes = read_folder(where / "train", budget)
            read = [train, read_folder(where / "test", budget, classes)[0]]
        else:
            first, classes = read_folder(where, budget)
            read = [first]
    else:
        if not where.is_file():
            raise UserError(f"data.path={path}: no such file")
        read, classes = read_npz(where, budget)
    channels = channels_of(*read)
    splits = [to_split(r, size, channels, classes) for r in read]
    if len({s.shape for s in splits}) > 1:
        raise UserError(f"the training images are {splits[0].shape[1]}x{splits[0].shape[2]} and the test images "
                        f"{splits[1].shape[1]}x{splits[1].shape[2]}: set data.image_size=S to bring both to S x S")
    return splits
