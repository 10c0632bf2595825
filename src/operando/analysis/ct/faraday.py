"""Traveling Li from the cycling current (Faraday's law), to compare with the CT-measured Li.

The paper (Supplementary Note 3) converts the charge passed in each current-on
period to a volume of Li metal::

    capacity [mAh] = I [mA] × t [min] / 60
    mass [g]       = capacity / 3860 mAh g⁻¹      (specific capacity of Li metal)
    volume [cm³]   = mass / 0.534 g cm⁻³          (density of Li metal)

Its cell ran at 1.5 mA cm⁻² in 10 min periods, so one period moves
0.25 mAh cm⁻², i.e. an equivalent layer of 1.2129 µm of Li, and the 12 charging
periods (3.0 mAh cm⁻²) 14.554 µm. Over the paper's ROI of
1707 × 2280 × (1.33 µm)² = 6.8845e6 µm² that is 1.002e8 µm³.

:func:`traveling_li` does this per requested time, from current-on segments at a
constant current density or from a logged (time, current) table;
:func:`compare_with_ct` sets it beside the CT-measured volume change
(:func:`ct_volume_change`), as in the paper's Fig. 3d and Supplementary Fig. 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy.integrate import cumulative_trapezoid

from operando.errors import ConfigError, ShapeMismatchError

__all__ = [
    "LI_DENSITY_G_PER_CM3",
    "LI_SPECIFIC_CAPACITY_MAH_PER_G",
    "compare_with_ct",
    "ct_volume_change",
    "parse_segments",
    "traveling_li",
]

#: Specific capacity of Li metal (paper, Supplementary Note 3).
LI_SPECIFIC_CAPACITY_MAH_PER_G = 3860.0
#: Density of Li metal (paper, Supplementary Note 3).
LI_DENSITY_G_PER_CM3 = 0.534
UM2_PER_CM2 = 1e8
UM3_PER_CM3 = 1e12
UM_PER_CM = 1e4


def parse_segments(text: str) -> np.ndarray:
    """Current-on segments from a flag value such as ``"0:10,30:40"`` (minutes).

    Returns
    -------
    ndarray of float64, shape (S, 2)
        ``(start_min, end_min)`` per segment, checked by the rules of :func:`traveling_li`.

    Raises
    ------
    ConfigError
        If a segment is not ``start:end`` with numbers, or the segments break a rule.
    """
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            start, end = (float(v) for v in item.split(":"))
        except ValueError:
            raise ConfigError(
                "--current-on", f"{item!r} is not start:end in minutes", remedy="Write e.g. 0:10,30:40."
            ) from None
        pairs.append((start, end))
    return _check_segments(pairs)


def traveling_li(
    times_min: Sequence[float],
    *,
    area_cm2: float | None = None,
    area_um2: float | None = None,
    current_density_ma_cm2: float | None = None,
    segments_min: Sequence[Sequence[float]] | None = None,
    current_table: tuple[Sequence[float], Sequence[float]] | None = None,
    signed: bool = False,
) -> xr.Dataset:
    """Cumulative charge and the Li it moves, per requested time, by Faraday's law.

    Give the area as ``area_cm2`` or ``area_um2`` (e.g. the ROI area), and the
    current either as ``current_density_ma_cm2`` on ``segments_min`` or as a
    logged ``current_table``.

    Parameters
    ----------
    times_min : sequence of float, shape (T,)
        Times in minutes, strictly increasing (e.g. the CT scan times).
    area_cm2, area_um2 : float, keyword-only
        Electrode area, positive; exactly one.
    current_density_ma_cm2 : float, keyword-only
        Magnitude of the current density while on (paper: 1.5 mA cm⁻²).
    segments_min : sequence of (start_min, end_min), shape (S, 2), keyword-only
        Current-on periods, positive durations, not overlapping.
    current_table : (time_min, current_ma), each of shape (N,), keyword-only
        Logged current in mA at strictly increasing times; integrated with the
        trapezoid rule and zero before the first sample.
    signed : bool, keyword-only
        Integrate the table's current with its sign (net Li moved towards the
        plating side) instead of its magnitude (all Li moved, the paper's choice).

    Returns
    -------
    xarray.Dataset
        Over ``time``: ``charge_mah``, ``li_mass_g``, ``faraday_volume_um3`` and
        ``faraday_thickness_um`` (volume over the area); attrs hold the area and constants.

    Raises
    ------
    ConfigError
        Bad area, current, segments or times (the message names the value).
    """
    times = _check_increasing(times_min, "times_min")
    area = _area_um2(area_cm2, area_um2)
    charge = _charge_mah(times, area, current_density_ma_cm2, segments_min, current_table, signed)
    mass = charge / LI_SPECIFIC_CAPACITY_MAH_PER_G
    volume = mass / LI_DENSITY_G_PER_CM3 * UM3_PER_CM3
    data = {
        "charge_mah": ("time", charge, {"units": "mAh", "long_name": "cumulative charge passed"}),
        "li_mass_g": ("time", mass, {"units": "g", "long_name": "Li mass moved (Faraday)"}),
        "faraday_volume_um3": ("time", volume, {"units": "µm³", "long_name": "Li volume moved (Faraday)"}),
        "faraday_thickness_um": (
            "time",
            volume / area,
            {"units": "µm", "long_name": "equivalent Li thickness over the area"},
        ),
    }
    attrs = {
        "area_um2": area,
        "specific_capacity_mah_per_g": LI_SPECIFIC_CAPACITY_MAH_PER_G,
        "li_density_g_per_cm3": LI_DENSITY_G_PER_CM3,
    }
    time = xr.Variable("time", times, {"units": "min"})
    return xr.Dataset(data, coords={"time": time}, attrs=attrs)


def ct_volume_change(
    stats: xr.Dataset, classes: Sequence[str] = ("deposited_li", "dendrite"), *, since: int = 0
) -> xr.DataArray:
    """CT-measured volume change of a sum of classes since timestep ``since``, over ``time``.

    Parameters
    ----------
    stats : xarray.Dataset
        Cell statistics with ``volume_um3`` (time, class).
    classes : sequence of str
        Classes summed (default: the Li plated on the plating side).
    since : int, keyword-only
        Index of the reference timestep.

    Raises
    ------
    ConfigError
        If a class is not in ``stats``.
    """
    known = [str(c) for c in stats["class"].values]
    missing = [c for c in classes if c not in known]
    if missing:
        raise ConfigError("classes", f"{missing} not among {known}", remedy="Name classes of the statistics.")
    total = stats["volume_um3"].sel({"class": list(classes)}).sum("class")
    change = total - total.isel(time=since)
    return change.rename("measured_volume_um3").assign_attrs(units="µm³", classes=list(classes))


def compare_with_ct(faraday: xr.Dataset, measured: xr.DataArray) -> xr.Dataset:
    """The Faraday and CT-measured Li volumes side by side, and their ratio, over ``time``.

    Parameters
    ----------
    faraday : xarray.Dataset
        From :func:`traveling_li`, computed at the CT times.
    measured : xarray.DataArray, shape (T,)
        CT-measured Li volume change in µm³ over ``time`` (see :func:`ct_volume_change`).

    Returns
    -------
    xarray.Dataset
        ``faraday_volume_um3``, ``measured_volume_um3`` and ``ratio`` (measured over
        Faraday, the paper's Supplementary Fig. 8; NaN where no charge passed yet).

    Raises
    ------
    ShapeMismatchError
        If the two do not share the same times.
    """
    try:
        f, m = xr.align(faraday["faraday_volume_um3"], measured.rename(None), join="exact")
    except ValueError:
        raise ShapeMismatchError(
            "measured",
            f"times {np.asarray(measured['time']).tolist()} differ from the Faraday times "
            f"{np.asarray(faraday['time']).tolist()}",
            remedy="Compute traveling_li at the CT times, e.g. traveling_li(stats.time.values, ...).",
        ) from None
    ratio = m / f.where(f != 0)
    return xr.Dataset(
        {
            "faraday_volume_um3": f,
            "measured_volume_um3": m.assign_attrs(units="µm³"),
            "ratio": ratio.assign_attrs(units="1", long_name="measured / Faraday Li volume"),
        }
    )


def _area_um2(area_cm2: float | None, area_um2: float | None) -> float:
    if (area_cm2 is None) == (area_um2 is None):
        raise ConfigError(
            "area", f"got area_cm2={area_cm2} and area_um2={area_um2}", remedy="Give exactly one area."
        )
    area = area_cm2 * UM2_PER_CM2 if area_um2 is None else area_um2
    if not (np.isfinite(area) and area > 0):
        raise ConfigError(
            "--area", f"area {area} µm² must be a positive number", remedy="Pass the electrode area."
        )
    return float(area)


def _check_increasing(values: Sequence[float], where: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ConfigError(where, f"{arr.tolist()} is not a non-empty list of finite times in minutes")
    steps = np.diff(arr)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        raise ConfigError(
            where,
            f"times are not increasing: {arr[i]:g} min is followed by {arr[i + 1]:g} min",
            remedy="Sort the times and drop duplicates.",
        )
    return arr


def _check_segments(segments: Sequence[Sequence[float]]) -> np.ndarray:
    seg = np.asarray(segments, dtype=np.float64) if len(segments) else np.empty((0, 2))
    if seg.ndim != 2 or seg.shape[1] != 2 or not np.all(np.isfinite(seg)):
        raise ConfigError(
            "--current-on", f"segments {seg.tolist()} are not finite (start_min, end_min) pairs"
        )
    short = seg[:, 1] <= seg[:, 0]
    if np.any(short):
        s, e = seg[int(np.argmax(short))]
        raise ConfigError(
            "--current-on", f"segment {s:g}:{e:g} min has a non-positive duration", remedy="Write start:end."
        )
    seg = seg[np.argsort(seg[:, 0], kind="stable")]
    overlap = seg[1:, 0] < seg[:-1, 1]
    if np.any(overlap):
        i = int(np.argmax(overlap))
        raise ConfigError(
            "--current-on",
            f"segments {seg[i, 0]:g}:{seg[i, 1]:g} and {seg[i + 1, 0]:g}:{seg[i + 1, 1]:g} min overlap",
            remedy="Merge or separate overlapping current-on periods.",
        )
    return seg


def _on_minutes(times: np.ndarray, segments: np.ndarray) -> np.ndarray:
    # Time the current has been on by each requested time: the overlap of [start, t] with each segment.
    lengths = segments[:, 1] - segments[:, 0]
    return np.clip(times[:, None] - segments[None, :, 0], 0.0, lengths[None, :]).sum(axis=1)


def _table_mah(times: np.ndarray, table: tuple, signed: bool) -> np.ndarray:
    t_log = _check_increasing(table[0], "current_table time")
    current = np.asarray(table[1], dtype=np.float64)
    if current.shape != t_log.shape or not np.all(np.isfinite(current)):
        raise ConfigError(
            "current_table",
            f"{current.size} currents for {t_log.size} times, or NaN/inf among them",
            remedy="Give one finite current in mA per logged time.",
        )
    current = current if signed else np.abs(current)
    mah = cumulative_trapezoid(current, t_log / 60.0, initial=0.0)
    return np.interp(times, t_log, mah, left=0.0, right=mah[-1])


def _charge_mah(
    times: np.ndarray,
    area_um2: float,
    density: float | None,
    segments: Sequence[Sequence[float]] | None,
    table: tuple | None,
    signed: bool,
) -> np.ndarray:
    if (table is None) == (segments is None and density is None):
        raise ConfigError(
            "current",
            "give either current_density_ma_cm2 with segments_min, or current_table",
            remedy="Pass the current one way only.",
        )
    if table is not None:
        return _table_mah(times, table, signed)
    if density is None or segments is None or not (np.isfinite(density) and density > 0):
        raise ConfigError(
            "--current-density",
            f"current density {density} mA/cm² with segments {segments} is not usable",
            remedy="Pass a positive current density (mA/cm²) and the --current-on segments.",
        )
    current_ma = density * area_um2 / UM2_PER_CM2
    return current_ma * _on_minutes(times, _check_segments(segments)) / 60.0
