"""Writing a source's train/val/test without ever holding the source in memory.

A source is a few *parts* (its own files' splits: `train`, `val`, `test`, or a single `all`),
each a pair (images, labels): labels a small int array, images anything with `shape` and row
slicing — a numpy array or memory map, an h5py dataset, a `.npy` inside an `.npz`
(`NpyInZip`), or files decoded on demand (`LazyImages`). `plan_splits` decides which rows of
which part go to each output split (from labels alone); `write_plan` then streams those rows
block by block into a `PreparedWriter`.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from gradattn.core.errors import GradattnError
from gradattn.core.io import one_line
from gradattn.prepared.format import SPLITS, PreparedWriter
from gradattn.sources.splits import Plan, plan_splits

# Rows are read in blocks of about this many bytes: enough for fast sequential reads, small
# enough that PCam or 224 px TissueMNIST prepare in a few hundred MB. (PreparedWriter's pixel
# statistics briefly take ~24 bytes per block byte, as float64: keep blocks small.)
BLOCK_BYTES = 8 << 20

DECODE_THREADS = min(4, os.cpu_count() or 1)


class LazyImages:
    """`count` images of `shape` (H, W, C), each made by `load(i)` only when asked for."""

    def __init__(self, count: int, shape: tuple[int, int, int], load: Callable[[int], np.ndarray]):
        self.count, self.image_shape, self.load = count, tuple(shape), load

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.image_shape)

    def __len__(self) -> int:
        return self.count

    def load_rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.image_shape), dtype=np.uint8)

        def fill(j: int) -> None:
            out[j] = self.load(int(rows[j]))

        # Image decoders release the GIL, so a few threads decode in parallel.
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            for _ in pool.map(fill, range(len(rows))):
                pass
        return out

    def __getitem__(self, item: slice) -> np.ndarray:
        return self.load_rows(np.arange(*item.indices(self.count)))


def decode_image(
    archive: zipfile.ZipFile, member: str, mode: str | None, *, where: str, fix: str
) -> Image.Image:
    """Member `member` of `archive` decoded in full (converted to `mode` if given); a damaged
    or non-image file becomes one line naming `where` (the file the user can fix)."""
    try:
        with Image.open(io.BytesIO(archive.read(member))) as im:
            im.load()
            im = eight_bit(im, where=where)
            return im.convert(mode) if mode else im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise GradattnError(f"{where} is not a readable image ({one_line(err)}): {fix}") from None


def eight_bit(im: Image.Image, *, where: str) -> Image.Image:
    """A 16-bit grey image (PNG, TIFF: common for medical images) scaled to 8 bits, 65535 ->
    255; PIL's convert('L') would clip it at 255, making it nearly all white. Other modes
    are returned as they are (PIL reduces 16-bit colour to 8 bits itself)."""
    if not (im.mode.startswith("I;16") or im.mode == "I"):
        if im.mode == "F":
            raise GradattnError(f"{where} is a 32-bit floating-point image, whose grey levels "
                                "have no fixed range: save it as an 8- or 16-bit image")
        return im
    pixels = np.asarray(im).astype(np.int64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise GradattnError(f"{where} is a 32-bit integer image with values outside 0-65535: "
                            "save it as an 8- or 16-bit image")
    return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8), "L")


@contextmanager
def open_npz(path: str | Path, fix: str):
    """`np.load(path)` of an .npz, never with pickles; an unreadable file becomes one line
    naming it and `fix` (what to do)."""
    if not zipfile.is_zipfile(path):
        raise GradattnError(
            f"{path} is not a valid .npz file (not a zip of .npy arrays): {fix}"
        )
    try:
        with np.load(path) as arrays:
            yield arrays
    except GradattnError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        # numpy's advice for pickled arrays is to load them unsafely: never give it.
        reason = "it holds pickled objects" if "pickle" in str(err) else one_line(err)
        raise GradattnError(f"{path} is not a valid .npz file ({reason}): {fix}") from None


class NpyInZip:
    """One array of an `.npz`, read row block by row block (stored or deflated members).

    `np.load(npz, mmap_mode=...)` cannot map arrays inside a zip, and loading e.g.
    TissueMNIST-224 whole needs 12 GB; this reads sequentially instead.
    """

    def __init__(self, path: str | Path, key: str):
        self.path, self.member = Path(path), f"{key}.npy"
        self._zip = zipfile.ZipFile(self.path)
        if self.member not in self._zip.namelist():
            raise GradattnError(f"{self.path} has no array {key!r}")
        self._open()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def _open(self) -> None:
        self._file = self._zip.open(self.member)
        version = np.lib.format.read_magic(self._file)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise GradattnError(f"{self.path}:{self.member}: unsupported .npy version {version}")
        shape, fortran, dtype = read_header(self._file)
        if fortran:
            raise GradattnError(
                f"{self.path}:{self.member}: Fortran-ordered arrays are not supported"
            )
        self.shape, self.dtype, self._row = tuple(shape), np.dtype(dtype), 0

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            block = self._file.read(min(left, 64 << 20))
            if not block:
                raise GradattnError(f"{self.path}:{self.member} is truncated")
            chunks.append(block)
            left -= len(block)
        return b"".join(chunks)

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, step = item.indices(len(self))
        if step != 1:
            raise IndexError("NpyInZip reads contiguous row ranges only")
        if start < self._row:  # going back: start the member again
            self._file.close()
            self._open()
        while self._row < start:  # skip forward without keeping the bytes
            n = min(start - self._row, max(1, BLOCK_BYTES // max(self.row_bytes, 1)))
            self._read(n * self.row_bytes)
            self._row += n
        n = max(stop - start, 0)
        data = np.frombuffer(self._read(n * self.row_bytes), dtype=self.dtype)
        self._row += n
        return data.reshape(n, *self.shape[1:])

    def close(self) -> None:
        self._file.close()
        self._zip.close()


def _blocks(
    images, labels: np.ndarray, rows: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if len(rows) == 0:
        return
    row_bytes = int(np.prod(images.shape[1:], dtype=np.int64))
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    if hasattr(images, "load_rows"):  # decoded one by one: decode only the rows asked for
        for j in range(0, len(rows), step):
            sel = rows[j : j + step]
            yield images.load_rows(sel), labels[sel]
        return
    for start in range(int(rows[0]), int(rows[-1]) + 1, step):
        lo, hi = np.searchsorted(rows, [start, start + step])
        if lo == hi:
            continue
        block = np.asarray(images[start : min(start + step, len(images))])
        sel = rows[lo:hi]
        yield block[sel - start], labels[sel]


def write_plan(
    writer: PreparedWriter,
    parts: dict[str, tuple[object, np.ndarray]],
    plan: Plan,
    classes: Sequence[str] | None = None,
) -> None:
    """Stream the planned rows into `writer`; `classes`, when the source read them from its
    own files, replace the spec's."""
    if classes is not None:
        writer.use_classes(classes)
    shapes = {
        tuple(images.shape[1:]) + ((1,) if len(images.shape) == 3 else ())
        for images, _ in parts.values()
    }
    if len(shapes) != 1:
        raise GradattnError(
            f"{writer.name}: parts have images of different shapes {sorted(shapes)}"
        )
    shape = shapes.pop()
    for out in SPLITS:
        count = sum(len(rows) for _, rows in plan[out])

        def chunks(out=out):
            for name, rows in plan[out]:
                images, labels = parts[name]
                yield from _blocks(images, labels, np.asarray(rows, dtype=np.int64))

        writer.stream_split(out, count, shape, chunks())


def write_splits(
    writer: PreparedWriter,
    parts: dict[str, tuple[object, np.ndarray]],
    split: str,
    seed: int,
    classes: Sequence[str] | None = None,
) -> None:
    """Plan the splits from the parts' labels and stream them into `writer`."""
    labels = {name: np.asarray(lab, dtype=np.int64).reshape(-1) for name, (_, lab) in parts.items()}
    for name, (images, _) in parts.items():
        if len(images) != len(labels[name]):
            raise GradattnError(
                f"{writer.name}: part {name} has {len(images)} images but "
                f"{len(labels[name])} labels"
            )
    plan, how = plan_splits(labels, split, seed)
    writer.notes["split_detail"] = how
    write_plan(writer, {n: (parts[n][0], labels[n]) for n in parts}, plan, classes)
