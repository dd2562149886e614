"""A NumPy .npz read one array at a time, each only after its .npy header (dtype, shape, order) has been read and
the bytes it declares checked against those the archive holds: a file cannot make the reader allocate more than it
holds, and whoever reads it can refuse a size before anything is allocated."""
from __future__ import annotations

import lzma
import math
import struct
import tokenize
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy

from vae.errors import UserError

MAX_DIRECTORY_BYTES = 2**20  # the archive's table of contents: ~10,000 members; numpy.savez writes ~100 bytes each
MAX_HEADER_BYTES = 10_000  # a .npy header's, as numpy bounds it (a dict of three short entries)
CHUNK = 2**22  # bytes decompressed at a time, straight into the array
# what a broken or foreign archive raises while it is read (BadZipFile: not a zip, bad CRC; EOFError: cut short;
# NotImplementedError: a compression method zipfile lacks; ValueError: a bad .npy header)
READ_ERRORS = (OSError, EOFError, ValueError, struct.error, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
               NotImplementedError)
# and what numpy's parser of a .npy header (Python literal syntax, tokenized) raises on a damaged one
HEADER_ERRORS = (*READ_ERRORS, SyntaxError, TypeError, tokenize.TokenError)


class Header(NamedTuple):
    """An array as its .npy header declares it, before any of its data is read."""

    member: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool  # stored in column-major order
    offset: int  # where the data start in the member

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def unreadable(path: Path, why: str) -> UserError:
    return UserError(f"could not read {path} as a NumPy .npz: {why}")


def reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__


@contextmanager
def opened(path: Path):
    """The archive, its table of contents bounded before zipfile reads it (a ZipInfo per member costs ~6 times the
    member's entry in memory)."""
    try:
        with open(path, "rb") as f:
            if f.read(len(npy.MAGIC_PREFIX)) == npy.MAGIC_PREFIX:
                raise unreadable(path, "it holds one array, not named arrays (save them with numpy.savez)")
            end_record = getattr(zipfile, "_EndRecData", None)  # the stdlib's reader of the end record (zip64 too)
            end = end_record(f) if end_record else None  # private, as it has been since Python 2.6: else no bound
            if end is not None and end[zipfile._ECD_SIZE] > MAX_DIRECTORY_BYTES:
                raise unreadable(path, f"its table of contents declares {end[zipfile._ECD_ENTRIES_TOTAL]:,} members "
                                       f"in {end[zipfile._ECD_SIZE]:,} bytes, more than the {MAX_DIRECTORY_BYTES:,} "
                                       f"bytes read (a .npz of images holds a few arrays)")
        archive = zipfile.ZipFile(path)
    except READ_ERRORS as e:
        raise unreadable(path, reason(e)) from None
    with archive:
        yield archive


def arrays(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's arrays by name: numpy.savez stores the array x as the member x.npy."""
    return {m.filename[:-4]: m for m in archive.infolist() if m.filename.endswith(".npy")}


def read_header(archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path) -> Header:
    """The member's .npy header (at most MAX_HEADER_BYTES of it read), refused when it declares Python objects,
    a negative size or more bytes than the member holds."""
    name = member.filename
    if member.flag_bits & 0x1:
        raise unreadable(path, f"{name} is encrypted")
    try:
        with archive.open(member) as f:
            version = npy.read_magic(f)
            if version not in ((1, 0), (2, 0)):  # 3.0 only adds UTF-8 field names, which no image array has
                raise ValueError(f"a .npy of format version {version[0]}.{version[1]}, not 1.0 or 2.0")
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = read(f, max_header_size=MAX_HEADER_BYTES)
            offset = f.tell()
    except HEADER_ERRORS as e:
        raise unreadable(path, f"{name}: {reason(e)}") from None
    if dtype.hasobject:
        raise unreadable(path, f"{name} holds Python objects (a pickle), which are not read")
    if any(n < 0 for n in shape):
        raise unreadable(path, f"{name} declares the shape {shape}")
    header = Header(member, shape, dtype, fortran, offset)
    held = member.file_size - offset
    if header.nbytes > held:
        raise unreadable(path, f"{name} declares {shape} {dtype} ({header.nbytes:,} bytes) but holds {max(held, 0):,}"
                               f" bytes: truncated or corrupt")
    return header


def read_array(archive: zipfile.ZipFile, header: Header, path: Path) -> np.ndarray:
    """The array's data, decompressed chunk by chunk into an array of the size its header declares."""
    flat = np.empty(header.nbytes, np.uint8)
    view, done = memoryview(flat), 0
    try:
        with archive.open(header.member) as f:
            f.read(header.offset)
            while done < header.nbytes:
                got = f.readinto(view[done:done + CHUNK])
                if not got:
                    break
                done += got
            extra = f.read(1)  # and zipfile checks the member's CRC at its end
    except READ_ERRORS as e:
        raise unreadable(path, f"{header.member.filename}: {reason(e)}") from None
    if done < header.nbytes:  # the archive's sizes were consistent, its data were not
        raise unreadable(path, f"{header.member.filename} ends after {done:,} of its {header.nbytes:,} bytes")
    if extra:
        raise unreadable(path, f"{header.member.filename} holds more than the {header.nbytes:,} bytes its header "
                               f"declares: corrupt")
    return flat.view(header.dtype).reshape(header.shape, order="F" if header.fortran else "C")
