"""TIFF readers: a multi-page (or 3D) TIFF, or a folder of 2D TIFF slices, as lazy frames.

Pages are read individually with tifffile, a few per dask task, so a TIFF larger
than memory streams through. Every page's data is checked to lie inside the file
before anything is read, so a truncated copy fails up front, naming the file.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from operando.errors import ShapeMismatchError, TruncatedFileError, UnsupportedFormatError
from operando.io.readers._frames import Frames, FrameSource, Window, check_dtype, lazy_frames

__all__ = ["TIFF_SUFFIXES", "natural_key", "read_tiff", "read_tiff_folder"]

TIFF_SUFFIXES = (".tif", ".tiff")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Descriptions tifffile writes itself only record the shape: not beamline metadata.
_SHAPE_ONLY = re.compile(r'^\{"shape": \[[\d, ]*\]\}$')


def natural_key(path: Path) -> tuple[Any, ...]:
    """Sort key that orders ``im2`` before ``im10``."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", path.name))


def read_tiff(path: str | Path, *, frames: int | None = None) -> Frames:
    """Open a TIFF lazily as frames of shape (N, Y, X), N = number of 2D pages.

    Parameters
    ----------
    path : str or Path
        A multi-page TIFF (one page per slice or frame) or a single 2D page.
    frames : int, optional, keyword-only
        Frames per dask chunk (default: about ``chunks.target_mib``).

    Raises
    ------
    UnsupportedFormatError, TruncatedFileError, UnsupportedDtypeError
    """
    path = Path(path)
    with _open(path) as tf:
        series = tf.series[0]
        shape, dtype = _frame_stack_shape(series, path), check_dtype(series.dtype, path)
        _check_whole(tf, path)
        attrs = tiff_metadata(tf)
    source = FrameSource(path, shape, dtype, _read_pages)
    return Frames(lazy_frames(source, frames=frames), path, attrs, source=source)


def read_tiff_folder(folder: str | Path, *, frames: int | None = None) -> Frames:
    """Open a folder of 2D TIFF slices, in natural order, as frames of shape (N, Y, X).

    Every slice's header is read (cheap) to check shapes, dtypes and truncation.
    """
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES), key=natural_key)
    if not files:
        raise UnsupportedFormatError(folder, "folder holds no .tif/.tiff slices")
    first = read_tiff(files[0])
    for f in files[1:]:
        with _open(f) as tf:
            series = tf.series[0]
            if tuple(series.shape) != first.data.shape[1:] or series.dtype != first.data.dtype:
                raise ShapeMismatchError(
                    f,
                    f"slice is {tuple(series.shape)} {series.dtype}, but {files[0].name} is "
                    f"{first.data.shape[1:]} {first.data.dtype}",
                    remedy="All slices of a volume must share one shape and dtype.",
                )
            _check_whole(tf, f)
    source = FrameSource(folder, (len(files), *first.data.shape[1:]), first.data.dtype, _read_slices)
    attrs = {**first.attrs, "tiff:slices": len(files)}
    return Frames(lazy_frames(source, frames=frames), folder, attrs, source=source)


def tiff_metadata(tf: tifffile.TiffFile) -> dict[str, Any]:
    """Beamline fields of the first page: description, resolution, software, date."""
    tags = tf.pages.first.tags
    out: dict[str, Any] = {}
    desc = tags.valueof("ImageDescription")
    if isinstance(desc, str) and desc.strip() and not _SHAPE_ONLY.match(desc.strip()):
        out["tiff:image_description"] = desc.strip()
    unit = tags.valueof("ResolutionUnit")
    # tifffile writes a placeholder resolution of 1 with unit NONE: not a measurement.
    if unit is not None and int(unit) != 1:
        for name in ("XResolution", "YResolution"):
            value = tags.valueof(name)
            if value is not None and value[1]:
                out[f"tiff:{name[0].lower()}_resolution"] = value[0] / value[1]
        out["tiff:resolution_unit"] = getattr(unit, "name", str(unit)).lower()
    for name, key in (("Software", "software"), ("DateTime", "datetime")):
        value = tags.valueof(name)
        if isinstance(value, str) and value.strip():
            out[f"tiff:{key}"] = value.strip()
    return out


def _open(path: Path) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except tifffile.TiffFileError as err:
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic in _TIFF_MAGIC:
            raise TruncatedFileError(path, f"TIFF structure cannot be read ({err})") from err
        raise UnsupportedFormatError(path, f"not a TIFF file (starts with {magic!r})") from err


def _frame_stack_shape(series: tifffile.TiffPageSeries, path: Path) -> tuple[int, int, int]:
    # Separate sample planes (axes "SYX", how tifffile stores a 3- or 4-slice stack
    # without photometric) are frames; interleaved colour ("YXS") is not.
    if series.axes.endswith("S") or len(series.shape) < 2:
        raise UnsupportedFormatError(
            path,
            f"TIFF holds {series.shape} {series.axes} data; only grey-scale frames (one per page) are read",
        )
    n = int(np.prod(series.shape[:-2], dtype=np.int64))
    return (n, *series.shape[-2:])


def _check_whole(tf: tifffile.TiffFile, path: Path) -> None:
    """Raise TruncatedFileError if the IFD chain or any page's data runs past the file end."""
    pages, fh = tf.pages, tf.filehandle
    n = len(pages)  # loads every IFD; tifffile stops (with a log line) at a broken link
    fh.seek(pages.next_page_offset)
    raw = fh.read(tf.tiff.offsetsize)
    if len(raw) < tf.tiff.offsetsize:
        raise TruncatedFileError(path, f"the file ends ({fh.size} bytes) inside the header of page {n}")
    next_ifd = struct.unpack(tf.tiff.offsetformat, raw)[0]
    if next_ifd:
        raise TruncatedFileError(
            path,
            f"the page chain breaks after page {n}: the next page is at byte {next_ifd}, past the file end ({fh.size} bytes)",
        )
    series = tf.series[0]
    expected = int(np.prod(series.shape[:-2], dtype=np.int64))
    if series.dataoffset is not None:  # contiguous: tifffile may not index every page
        end = series.dataoffset + series.nbytes
    elif n < expected:
        raise TruncatedFileError(path, f"{n} pages found, the header promises {expected}")
    else:
        end = max(o + c for p in pages for o, c in zip(p.dataoffsets, p.databytecounts, strict=True))
    if end > fh.size:
        raise TruncatedFileError(path, f"image data ends at byte {end}, past the file end ({fh.size} bytes)")


def _read_pages(path: Path, start: int, stop: int, window: Window) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        (n, y, x) = _frame_stack_shape(series, path)
        if len(series.pages) != n:
            # Not one page per frame (e.g. a tiny volume written as one page): read it whole.
            return series.asarray().reshape(n, y, x)[start:stop][(slice(None), *window)]
        return np.stack([_read_window(series.pages[i], window, (y, x)) for i in range(start, stop)])


def _read_slices(folder: Path, start: int, stop: int, window: Window) -> np.ndarray:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES), key=natural_key)
    out = []
    for f in files[start:stop]:
        with tifffile.TiffFile(f) as tf:
            page = tf.pages.first
            out.append(_read_window(page, window, tf.series[0].shape[-2:]))
    return np.stack(out)


def _read_window(page: tifffile.TiffPage, window: Window, frame: tuple[int, int]) -> np.ndarray:
    """One page, seen as a ``frame``-shaped image, cropped to ``window``.

    Uncompressed pages read only the window's bytes. ``frame`` comes from the
    series, not the page: tifffile may give a page of a ``(n, 2, 1)`` volume the
    shape ``(1, 2)``; the bytes are the same in C order.
    """
    if page.is_memmappable:
        mapped = np.memmap(
            page.parent.filehandle.path,
            dtype=page.dtype.newbyteorder(page.parent.byteorder),
            mode="r",
            offset=page.dataoffsets[0],
            shape=tuple(frame),
        )
        return np.array(mapped[window], dtype=page.dtype)
    return page.asarray().reshape(frame)[window]
