"""Xradia ``.xrm``/``.txrm`` reader (OLE2 compound files, read with olefile).

Streams used (as documented by the xanespy and dxchange projects and checked on
SSRL 6-2c files): ``ImageInfo/ImageWidth``, ``ImageHeight``, ``DataType`` (5 =
uint16, 10 = float32), ``PixelSize`` (µm), ``Energy`` (eV, one per image),
``ImagesTaken``; image ``i`` lies in ``ImageData{i // 100 + 1}/Image{i + 1}``.

SSRL writes ``Energy = 0``; the energy is then taken from the file name
(``..._08324.0_eV_001of003.xrm``), and ``repNN`` in the name gives the scan.
Reference (flat-field) frames carry ``_ref_`` in the name.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import olefile

from operando.errors import FrameCountError, ShapeMismatchError, TruncatedFileError, UnsupportedFormatError
from operando.io.readers._frames import Frames, FrameSource, Window, lazy_frames
from operando.io.readers.tiff import natural_key

__all__ = ["XRM_SUFFIXES", "XrmHeader", "is_reference", "read_xrm", "read_xrm_folder", "read_xrm_header"]

XRM_SUFFIXES = (".xrm", ".txrm")
_DTYPES = {5: np.dtype("<u2"), 10: np.dtype("<f4")}
_ENERGY_IN_NAME = re.compile(r"_(\d+(?:\.\d+)?)_?eV", re.IGNORECASE)
_SCAN_IN_NAME = re.compile(r"^rep(\d+)", re.IGNORECASE)
_OLE_HEADER_BYTES = 512


@dataclass(frozen=True)
class XrmHeader:
    """What an Xradia file says about its images.

    Attributes
    ----------
    shape : tuple of int
        (N images, Y, X).
    energies_ev : ndarray of shape (N,)
        Energy of each image (from the header, else the file name; NaN if neither).
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    pixel_size_um: float
    energies_ev: np.ndarray
    scan: int
    exposure_s: float


def is_reference(path: Path) -> bool:
    """True for reference (flat-field) frames, named ``..._ref_...``."""
    return "_ref_" in path.name.lower()


def read_xrm_header(path: str | Path) -> XrmHeader:
    """Read and check the header of an ``.xrm``/``.txrm`` file (no image data).

    Raises
    ------
    UnsupportedFormatError
        If the file is not an Xradia OLE file or has an unknown data type.
    TruncatedFileError
        If an image stream is missing or the file is too short to hold it.
    """
    path = Path(path)
    if not olefile.isOleFile(str(path)):
        raise UnsupportedFormatError(path, "not an OLE2 compound file, so not an Xradia .xrm/.txrm")
    try:
        ole = olefile.OleFileIO(str(path))
    except OSError as err:
        raise TruncatedFileError(path, f"OLE directory cannot be read ({err})") from err
    with ole:
        width, height, code = (
            _scalar(ole, f"ImageInfo/{n}", "<i4", path) for n in ("ImageWidth", "ImageHeight", "DataType")
        )
        if code not in _DTYPES:
            raise UnsupportedFormatError(path, f"ImageInfo/DataType {code} is not 5 (uint16) or 10 (float32)")
        n = max(1, _scalar(ole, "ImageInfo/ImagesTaken", "<i4", path, default=1))
        dtype = _DTYPES[code]
        _check_images(ole, path, n, width * height * dtype.itemsize)
        energies = _read(ole, "ImageInfo/Energy", "<f4", path)[:n].astype(np.float64)
        # float32 in the file: go through its shortest repr so 0.0312 stays 0.0312.
        pixel = float(str(np.float32(_scalar(ole, "ImageInfo/PixelSize", "<f4", path))))
        exposure = float(_scalar(ole, "ImageInfo/ExpTimes", "<f4", path, default=np.nan))
    if energies.size < n or not np.all(energies > 0):
        energies = np.full(n, _energy_from_name(path))
    scan = _SCAN_IN_NAME.match(path.name)
    return XrmHeader(path, (n, height, width), dtype, pixel, energies, int(scan[1]) if scan else 0, exposure)


def read_xrm(path: str | Path) -> Frames:
    """Open an ``.xrm``/``.txrm`` file lazily as frames (N, Y, X) with energies and pixel size."""
    header = read_xrm_header(path)
    source = FrameSource(header.path, header.shape, header.dtype, _read_images)
    attrs = {"xrm:exposure_s": header.exposure_s, "xrm:pixel_size_um": header.pixel_size_um}
    return Frames(
        lazy_frames(source, frames=1), header.path, attrs, header.energies_ev, header.pixel_size_um, source
    )


def read_xrm_folder(folder: str | Path, *, reference: bool) -> Frames:
    """Average the repeated frames of an SSRL-style folder into frames (S·E, Y, X), scan-major.

    Parameters
    ----------
    folder : str or Path
        Folder of ``.xrm`` files; sample and reference frames may share it.
    reference : bool, keyword-only
        Take the reference files (``_ref_`` in the name) rather than the sample files.

    Returns
    -------
    Frames
        float32 frames, the mean of each (scan, energy) group; ``energies_ev``
        holds the E energies of a scan, ``attrs["xrm:scans"]`` the ``repNN`` numbers.

    Raises
    ------
    FrameCountError
        If the folder holds no such files, or a scan lacks an energy the others have.
    TruncatedFileError, UnsupportedFormatError, ShapeMismatchError
    """
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in XRM_SUFFIXES and is_reference(p) == reference]
    kind = "reference (_ref_)" if reference else "sample (no _ref_)"
    if not files:
        raise FrameCountError(
            folder,
            f"no {kind} .xrm files in the folder",
            remedy="Check the folder, or pass the files' folder for --flat.",
        )
    headers = [read_xrm_header(p) for p in sorted(files, key=natural_key)]
    groups = _group(headers, folder)
    scans = sorted({s for s, _ in groups})
    energies = sorted({e for _, e in groups})
    missing = [(s, e) for s in scans for e in energies if (s, e) not in groups]
    if missing:
        raise FrameCountError(folder, f"{kind} frames of scan rep{missing[0][0]:02d} lack {missing[0][1]} eV")
    frames = [_mean_frame(groups[s, e]) for s in scans for e in energies]
    first = headers[0]
    attrs = {
        "xrm:scans": scans,
        "xrm:frames_averaged": [len(groups[s, e]) for s in scans for e in energies],
        "xrm:files": [h.path.name for h in headers],
        "xrm:exposure_s": first.exposure_s,
    }
    return Frames(
        da.stack(frames), folder, attrs, np.asarray(energies, dtype=np.float64), first.pixel_size_um
    )


def _group(headers: Iterable[XrmHeader], folder: Path) -> dict[tuple[int, float], list[XrmHeader]]:
    groups: dict[tuple[int, float], list[XrmHeader]] = defaultdict(list)
    first = None
    for h in headers:
        first = first or h
        if h.shape[1:] != first.shape[1:]:
            raise ShapeMismatchError(
                h.path, f"frames are {h.shape[1:]}, but {first.path.name} has {first.shape[1:]}"
            )
        if h.shape[0] != 1:
            raise UnsupportedFormatError(
                h.path, f"holds {h.shape[0]} images; folders of single-image .xrm files are read"
            )
        if np.isnan(h.energies_ev[0]):
            raise UnsupportedFormatError(
                h.path, "energy is 0 in the header and not in the file name (e.g. _08324.0_eV_)"
            )
        groups[h.scan, round(float(h.energies_ev[0]), 3)].append(h)
    return groups


def _mean_frame(headers: Sequence[XrmHeader]) -> da.Array:
    """Lazy float32 mean of repeated frames (Y, X)."""
    stack = da.concatenate(
        [lazy_frames(FrameSource(h.path, h.shape, h.dtype, _read_images), frames=1) for h in headers]
    )
    return stack.mean(axis=0, dtype=np.float32)


def _energy_from_name(path: Path) -> float:
    match = _ENERGY_IN_NAME.search(path.name)
    return float(match[1]) if match else np.nan


def _stream(i: int) -> str:
    return f"ImageData{i // 100 + 1}/Image{i + 1}"


def _check_images(ole: olefile.OleFileIO, path: Path, n: int, nbytes: int) -> None:
    size = path.stat().st_size
    for i in range(n):
        name = _stream(i)
        if not ole.exists(name):
            raise TruncatedFileError(
                path, f"image stream {name} is missing (the header promises {n} image(s))"
            )
        if ole.get_size(name) < nbytes or size < _OLE_HEADER_BYTES + (i + 1) * nbytes:
            raise TruncatedFileError(
                path, f"file is {size} bytes, too short for {i + 1} image(s) of {nbytes} bytes ({name})"
            )


def _read(ole: olefile.OleFileIO, name: str, fmt: str, path: Path) -> np.ndarray:
    if not ole.exists(name):
        raise TruncatedFileError(path, f"header stream {name} is missing")
    return np.frombuffer(ole.openstream(name).read(), dtype=fmt)


def _scalar(ole: olefile.OleFileIO, name: str, fmt: str, path: Path, default: float | None = None) -> float:
    if default is not None and not ole.exists(name):
        return default
    values = _read(ole, name, fmt, path)
    return values[0].item() if values.size else default


def _read_images(path: Path, start: int, stop: int, window: Window) -> np.ndarray:
    header = read_xrm_header(path)
    _, height, width = header.shape
    nbytes = height * width * header.dtype.itemsize
    out = []
    with olefile.OleFileIO(str(path)) as ole:
        for i in range(start, stop):
            raw = ole.openstream(_stream(i)).read()
            if len(raw) < nbytes:
                raise TruncatedFileError(path, f"{_stream(i)} holds {len(raw)} of {nbytes} bytes")
            out.append(np.frombuffer(raw[:nbytes], header.dtype).reshape(height, width)[window])
    return np.stack(out) if out else np.empty((0, *header.shape[1:]), header.dtype)[(slice(None), *window)]
