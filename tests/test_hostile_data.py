"""Your own data cannot hurt: every size a .npz or an image file declares is bounded before memory is allocated for
it, each hostile file is one line naming it and the bound, and the memory check counts the loaded images once."""
import resource
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

import vae.data.images
from vae.config.schema import Config, DataConfig, TrainConfig
from vae.data.load import load_data
from vae.device import available_bytes
from vae.errors import UserError
from vae.train import memory
from vae.train.memory import check_memory, estimate_bytes

CPU = torch.device("cpu")
X = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)  # (N, H, W)


def npy(shape, descr="|u1", data=b"", header=None, version=1):
    """The bytes of a .npy whose header declares `shape` and `descr` (or is `header`, as text), followed by `data`,
    whatever they hold: what a hostile writer can put in an archive."""
    text = (header or repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)})).encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    size = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + data


def archive(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def png(path, width, height, idat=None):
    """A PNG of 8-bit grey whose header declares width x height, with whatever image data `idat` holds."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat or zlib.compress(bytes(99)))
                     + chunk(b"IEND", b""))
    return path


def images_folder(path, n=4):
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(X[i % len(X)]).save(path / f"{i}.png")
    return path


def read(dataset, path):
    return load_data(DataConfig(dataset=dataset, path=str(path)), CPU)


@pytest.fixture
def small_address_space():
    """The process may grow by 1 GiB only: a reader that allocates what a file declares fails here with a
    MemoryError, instead of taking the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    status = Path("/proc/self/status")
    if status.is_file():
        size = int(next(line for line in status.read_text().splitlines() if line.startswith("VmSize")).split()[1])
        bound = size * 1024 + 2**30
        resource.setrlimit(resource.RLIMIT_AS, (bound if hard == resource.RLIM_INFINITY else min(bound, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# 1. A .npz: its labels, and each array's header, checked before the array is read

def hostile_npz(case, path):
    """Write the .npz of `case` at `path`."""
    if case == "label 2**62":
        np.savez(path, x=X, y=np.array([0, 2**62, 1, 2]))
    elif case == "negative label":
        np.savez(path, x=X, y=np.array([0, -3, 1, 2]))
    elif case == "float labels":
        np.savez(path, x=X, y=np.arange(4.0))
    elif case == "header declares 10**12 images":
        archive(path, {"x.npy": npy((10**12, 28, 28), data=bytes(100))})
    elif case == "header declares more than it holds":
        archive(path, {"x.npy": npy((100, 28, 28), data=bytes(10 * 784))})
    elif case == "negative shape":
        archive(path, {"x.npy": npy((-5, 28, 28))})
    elif case == "damaged header":  # cut inside its dict: numpy's tokenizer, not its parser, fails
        archive(path, {"x.npy": npy((), header="{'descr': '|u1', 'shape': (3, 4,")})
    elif case == "header over 10,000 bytes":
        archive(path, {"x.npy": npy((), header="{" + " " * 20000 + "}", version=2)})
    elif case == "pickled objects":
        np.savez(path, x=np.array([{"a": 1}], dtype=object))
    elif case == "5-D images":
        np.savez(path, x=np.zeros((2, 3, 3, 1, 1), np.uint8))
    elif case == "image of 8193 x 8193":  # 67 MB of zeros, 65 KB deflated
        archive(path, {"x.npy": npy((1, 8193, 8193), data=bytes(8193 * 8193))}, zipfile.ZIP_DEFLATED)
    elif case == "4,500 members":
        archive(path, {f"{i:0200d}.npy": b"" for i in range(4500)})
    elif case == "encrypted member":
        np.savez(path, x=X)
        data = bytearray(path.read_bytes())
        for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
            data[data.find(signature) + flags] |= 1
        path.write_bytes(data)
    elif case == "a data byte changed":
        np.savez(path, x=X)
        data = bytearray(path.read_bytes())
        data[-200] ^= 0xFF  # in x's pixels (the central directory and end record are the last ~120 bytes)
        path.write_bytes(data)
    elif case == "more bytes than declared":  # the tail would go unread, and its CRC unchecked
        archive(path, {"x.npy": npy((2, 28, 28), data=bytes(3 * 784))})
    elif case == "empty archive":
        archive(path, {})
    return path


@pytest.mark.parametrize("case, message", [
    ("label 2**62", r"case.npz: y holds the label 4611686018427387904: labels must be class indices 0..9,999 "
                    r"\(renumber them 0..K-1"),
    ("negative label", r"case.npz: y holds the label -3: labels must be class indices 0..9,999"),
    ("float labels", r"case.npz: y must be 4 integer labels >= 0 \(one per image of x\), got \(4,\) float64"),
    ("header declares 10**12 images", r"could not read .*case.npz as a NumPy .npz: x.npy declares "
                                      r"\(1000000000000, 28, 28\) uint8 \(784,000,000,000,000 bytes\) but holds 100 "
                                      r"bytes: truncated or corrupt"),
    ("header declares more than it holds", r"x.npy declares \(100, 28, 28\) uint8 \(78,400 bytes\) but holds 7,840 "
                                           r"bytes: truncated or corrupt"),
    ("negative shape", r"case.npz as a NumPy .npz: x.npy declares the shape \(-5, 28, 28\)"),
    ("damaged header", r"case.npz as a NumPy .npz: x.npy: .*EOF in multi-line statement"),
    ("header over 10,000 bytes", r"case.npz as a NumPy .npz: x.npy: Header info length \(\d+\) is large"),
    ("pickled objects", r"case.npz as a NumPy .npz: x.npy holds Python objects \(a pickle\), which are not read"),
    ("5-D images", r"case.npz: x must be N x H x W or N x H x W x C .* got \(2, 3, 3, 1, 1\)"),
    ("image of 8193 x 8193", r"case.npz: x holds images of 8193x8193 pixels, more than the 67,108,864 an image "
                             r"may have here"),
    ("4,500 members", r"case.npz as a NumPy .npz: its table of contents declares 4,500 members in [\d,]+ bytes, "
                      r"more than the 1,048,576 bytes read"),
    ("encrypted member", r"case.npz as a NumPy .npz: x.npy is encrypted"),
    ("a data byte changed", r"case.npz as a NumPy .npz: x.npy: Bad CRC-32"),
    ("more bytes than declared", r"case.npz as a NumPy .npz: x.npy holds more than the 1,568 bytes its header "
                                 r"declares: corrupt"),
    ("empty archive", r"case.npz must hold an array x \(or x_train and x_test\); it holds nothing"),
])
def test_a_hostile_npz_is_one_line_naming_the_file_and_the_bound(tmp_path, small_address_space, case, message):
    path = hostile_npz(case, tmp_path / "case.npz")
    with pytest.raises(UserError, match=message):
        read("npz", path)


def test_an_archive_larger_than_the_memory_available_is_refused_before_any_of_it_is_allocated(tmp_path,
                                                                                              monkeypatch):
    bomb = archive(tmp_path / "bomb.npz", {"x.npy": npy((2**14, 32, 32), data=bytes(2**24))}, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 2**16  # 16 MiB of zeros, deflated: a small zip bomb
    monkeypatch.setattr(vae.data.images, "available_bytes", lambda device: 2**22)  # 4 MiB free
    tracemalloc.start()  # numpy reports its allocations to it
    try:
        with pytest.raises(UserError, match=r"bomb.npz: its arrays \(x\) take 16.0 MiB of memory, more than the "
                                            r"4.0 MiB available to read them into"):
            read("npz", bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_a_header_declaring_a_gigabyte_in_a_tiny_file_is_one_line_through_the_cli_within_a_small_address_space(
        tmp_path):
    lying = archive(tmp_path / "lying.npz", {"x.npy": npy((2**20, 32, 32), data=bytes(1000))})
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    argv = ["--config", str(config), "data.dataset=npz", f"data.path={lying}", f"output.dir={tmp_path / 'run'}"]
    # the modules a run imports are loaded first; then the address space may grow by 256 MiB only, so reading
    # the declared 1 GiB (as numpy.load would) fails with MemoryError, a traceback
    child = ("import resource, sys, torch, vae.commands.train, vae.train.loop\n"
             "size = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024\n"
             "resource.setrlimit(resource.RLIMIT_AS, (size + 2**28, size + 2**28))\n"
             "from vae.cli import run\n"
             f"run(vae.commands.train.main, {argv!r})\n")
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: could not read {lying} as a NumPy .npz: x.npy declares (1048576, 32, 32) uint8 (1,073,741,824 "
        f"bytes) but holds 1,000 bytes: truncated or corrupt"]
    assert not (tmp_path / "run").exists()


def test_what_numpy_writes_reads_as_numpy_reads_it(tmp_path):
    """Column-major images, big-endian labels, members compressed with LZMA, 10,000 classes: all within bounds."""
    np.savez(tmp_path / "orders.npz", x=np.asfortranarray(X), y=np.array([3, 0, 1, 2], dtype=">i8"))
    with zipfile.ZipFile(tmp_path / "lzma.npz", "w", zipfile.ZIP_LZMA) as z, z.open("x.npy", "w") as f:
        np.lib.format.write_array(f, X)
    classes = np.arange(10_000)
    np.savez(tmp_path / "classes.npz", x=np.zeros((10_000, 2, 2), np.uint8), y=classes)
    for name in ("orders", "lzma"):
        images = vae.data.images.load_images("npz", str(tmp_path / f"{name}.npz"), 0)[0].images
        assert torch.equal(images[:, 0], torch.from_numpy(X))
    assert vae.data.images.load_images("npz", str(tmp_path / "orders.npz"), 0)[0].labels.tolist() == [3, 0, 1, 2]
    split = vae.data.images.load_images("npz", str(tmp_path / "classes.npz"), 0)[0]
    assert len(split.classes) == 10_000 and split.classes[-1] == "9999"


# 2. A folder: each image's size from its header before it is decoded, the files and classes counted as listed

def test_a_png_declaring_100000_x_100000_is_refused_from_its_header_in_our_words(tmp_path):
    folder = images_folder(tmp_path / "pngs")
    png(folder / "huge.png", 100_000, 100_000)  # 10**10 pixels; Pillow itself would raise its own bomb error
    with pytest.raises(UserError, match=r"the image .*pngs/huge.png declares 100000x100000 pixels, more than the "
                                        r"67,108,864 an image may have here"):
        read("folder", folder)


def test_an_image_over_our_bound_and_under_pillows_is_refused_without_pillows_warning(tmp_path):
    folder = images_folder(tmp_path / "pngs")
    png(folder / "big.png", 9000, 9000)  # 81 million pixels: Pillow warns of a decompression bomb above 89
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError, match=r"big.png declares 9000x9000 pixels, more than the 67,108,864"):
            read("folder", folder)


def test_a_truncated_png_is_one_line_naming_it(tmp_path):
    folder = images_folder(tmp_path / "pngs")
    png(folder / "cut.png", 6, 6, idat=b"not deflate data")
    with pytest.raises(UserError, match=r"could not read the image .*cut.png: .*\(corrupt, or not an image\?\)"):
        read("folder", folder)


def test_more_class_folders_than_the_bound_are_refused_as_they_are_listed(tmp_path):
    for i in range(10_001):
        (tmp_path / "many" / f"c{i:05d}").mkdir(parents=True)
    with pytest.raises(UserError, match=r"many holds more than 10,000 class folders, the most it may have"):
        read("folder", tmp_path / "many")


def test_more_files_than_the_bound_are_refused_as_they_are_listed(tmp_path, monkeypatch):
    images_folder(tmp_path / "d" / "train" / "a", n=3)
    images_folder(tmp_path / "d" / "test" / "a", n=3)
    monkeypatch.setattr(vae.data.images, "MAX_FILES", 5)  # counted over train and test together
    with pytest.raises(UserError, match=r"d/test/a: more than 5 image files, the most a folder of images may hold "
                                        r"here: save them as a .npz"):
        read("folder", tmp_path / "d")


def test_images_beyond_the_memory_available_are_refused_before_they_are_decoded(tmp_path, monkeypatch):
    folder = images_folder(tmp_path / "pngs", n=6)  # 36 bytes each
    monkeypatch.setattr(vae.data.images, "available_bytes", lambda device: 100)
    decoded = []
    monkeypatch.setattr(Image.Image, "convert", lambda image, mode: decoded.append(mode) or image)
    with pytest.raises(UserError, match=r"the images read up to .*pngs/2.png take 108 bytes of memory, more than "
                                        r"the 100 bytes available"):
        read("folder", folder)
    assert len(decoded) == 2


def test_links_that_loop_or_lead_to_devices_are_not_images(tmp_path):
    folder = images_folder(tmp_path / "pngs")
    (folder / "self.png").symlink_to("self.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    splits = read("folder", folder)
    assert len(splits.train) + len(splits.test) == 4


# 3. The memory check counts the loaded images once

def test_the_memory_check_counts_the_images_it_finds_in_memory_once(monkeypatch):
    cfg = Config(train=TrainConfig(batch_size=100))
    parts = estimate_bytes(cfg, (1, 28, 28), 70_000)
    rest = sum(parts.values()) - parts["the images"]  # what the run still has to allocate
    monkeypatch.setattr(memory, "available_bytes", lambda device: rest)  # measured with the images loaded
    check_memory(cfg, (1, 28, 28), 70_000, CPU)
    monkeypatch.setattr(memory, "available_bytes", lambda device: rest - 2**16)
    with pytest.raises(UserError, match=r"needs about 0.\d\d GiB of memory on cpu .* the images 0.05 GiB\)"):
        check_memory(cfg, (1, 28, 28), 70_000, CPU)
    # two workers start at once: each measures the memory with its own images loaded, not yet the other's
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * sum(parts.values()) - parts["the images"])
    check_memory(cfg, (1, 28, 28), 70_000, CPU, share=2)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * sum(parts.values()) - parts["the images"] - 2)
    with pytest.raises(UserError, match=r"its share of 2 workers"):
        check_memory(cfg, (1, 28, 28), 70_000, CPU, share=2)


def test_memory_that_torch_caches_on_the_gpu_counts_as_free(monkeypatch):
    """A tensor freed on CUDA (the images before their binarized copy) stays in torch's cache, not the driver's
    free memory; this process reuses it first."""
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2**30)
    assert available_bytes(gpu) == 7 * 2**30


def test_a_file_name_with_a_newline_stays_on_one_line_through_the_cli(tmp_path):
    folder = images_folder(tmp_path / "pngs")
    (folder / "bad\nname.png").write_bytes(b"not a png")
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", "mnist", "data.dataset=folder",
                             f"data.path={folder}", f"output.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: could not read the image {folder}/bad\\nname.png: cannot "
                                          f"identify image file '{folder}/bad\\nname.png' (corrupt, or not an image?)"]
