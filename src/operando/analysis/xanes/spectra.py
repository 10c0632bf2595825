"""Per-pixel XANES normalization and edge energy, vectorized over all pixels.

Kernels work on ``mu`` of shape ``(..., E)`` (energy last, any leading shape) with
no per-pixel loop: every window fit is one least-squares solve with all pixels as
right-hand sides. The steps, as in Athena/Larch ``pre_edge``:

1. pre-edge line fitted over ``edge + pre`` eV, post-edge polynomial (degree 0-2)
   over ``edge + post`` eV, both to μ;
2. edge step = post − pre at E0 (``e0``, default the nominal edge);
   normalized μ = (μ − pre line) / step, lightly smoothed along energy
   (Savitzky–Golay, :func:`scipy.signal.savgol_filter`);
3. E½ = first energy where normalized μ rises through 0.5 inside ``edge + search``,
   linearly interpolated; its uncertainty σ_E = σ_norm / slope, σ_norm being the
   pre-edge residual noise over the step (times the smoothing's noise gain);
4. white line = maximum of normalized μ inside ``edge + white_line``, refined by
   the parabola through the maximum and its two neighbours.

Pixels whose edge step is not positive (not above 3 σ of the pre-edge noise),
or with no rising crossing, get NaN.
:func:`edge_maps` maps the kernel over a labelled (..., energy, y, x) array with
:func:`xarray.apply_ufunc`, lazily when the input is dask-backed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy.signal import savgol_coeffs, savgol_filter

from operando.errors import EdgeCoverageError, EnergyListError, EnergyOrderError

__all__ = [
    "NI_K_EDGE_EV",
    "EdgeFeatures",
    "EdgeWindows",
    "edge_features",
    "edge_maps",
    "normalize",
]

NI_K_EDGE_EV = 8345.0  # nominal Ni K-edge of Ni2+/Ni3+ oxides (half height), eV
_BLOCK_BYTES = 32 * 2**20  # input bytes per dask block once energy is one chunk
_MIN_SNR = 3.0  # edge step over pre-edge noise σ below which a pixel has no edge
_FEATURES = ("edge_energy_ev", "edge_uncertainty_ev", "white_line_ev", "edge_step")


@dataclass(frozen=True)
class EdgeWindows:
    """Energy windows, in eV relative to the nominal edge ``edge_ev``.

    Attributes
    ----------
    edge_ev : float
        Nominal edge energy (default Ni K, :data:`NI_K_EDGE_EV`).
    pre, post : (float, float)
        Pre-edge line and post-edge polynomial fit windows.
    search : (float, float)
        Where E½ is searched.
    white_line : (float, float)
        Where the white-line maximum is searched.
    post_degree : int
        Degree of the post-edge polynomial: 0, 1 (line) or 2 (quadratic; Athena's
        normalization order 3).
    smooth_points : int
        Savitzky–Golay window (odd, ≥ 3; 0 for none), polynomial order 2.
    """

    edge_ev: float = NI_K_EDGE_EV
    pre: tuple[float, float] = (-45.0, -15.0)
    post: tuple[float, float] = (20.0, 55.0)
    search: tuple[float, float] = (-12.0, 12.0)
    white_line: tuple[float, float] = (0.0, 20.0)
    post_degree: int = 1
    smooth_points: int = 5

    def absolute(self, name: str) -> tuple[float, float]:
        """Window ``name`` in absolute eV."""
        lo, hi = getattr(self, name)
        return self.edge_ev + lo, self.edge_ev + hi


class EdgeFeatures(NamedTuple):
    """Per-pixel results of :func:`edge_features`, each an ndarray of shape (...)."""

    edge_energy_ev: np.ndarray
    edge_uncertainty_ev: np.ndarray
    white_line_ev: np.ndarray
    edge_step: np.ndarray


def normalize(
    energy: np.ndarray, mu: np.ndarray, *, windows: EdgeWindows = EdgeWindows(), e0: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-edge-subtracted, step-normalized μ.

    Parameters
    ----------
    energy : ndarray of shape (E,)
        Strictly increasing energies, eV.
    mu : ndarray of shape (..., E)
        Absorbance.
    windows : EdgeWindows, keyword-only
    e0 : float, optional
        Energy at which the step is measured (default ``windows.edge_ev``).

    Returns
    -------
    normalized : ndarray of shape (..., E)
        ``(mu - pre line) / step``; NaN where the step is NaN.
    step : ndarray of shape (...)
        Post-edge minus pre-edge curve at ``e0``; NaN where not above 3 × ``noise``
        (or roundoff): no detectable edge.
    noise : ndarray of shape (...)
        Standard deviation of the pre-edge residuals (units of ``mu``).
    """
    energy = _check_energy(energy, windows)
    e0 = windows.edge_ev if e0 is None else float(e0)
    mu = np.asarray(mu, dtype=np.float64)
    pre_curve, _, noise = _fit_window(energy, mu, windows.absolute("pre"), 1, e0)
    _, post_e0, _ = _fit_window(energy, mu - pre_curve, windows.absolute("post"), windows.post_degree, e0)
    # Not positive beyond the noise (or roundoff): no edge to normalize by.
    floor = np.maximum(_MIN_SNR * noise, 1e-9 * np.max(np.abs(mu), axis=-1, initial=0.0))
    step = np.where(post_e0 > floor, post_e0, np.nan)
    return (mu - pre_curve) / step[..., None], step, noise


def edge_features(
    energy: np.ndarray, mu: np.ndarray, *, windows: EdgeWindows = EdgeWindows(), e0: float | None = None
) -> EdgeFeatures:
    """E½, its uncertainty, white-line energy and edge step of every spectrum.

    Parameters
    ----------
    energy : ndarray of shape (E,)
        Strictly increasing energies, eV.
    mu : ndarray of shape (..., E)
        Absorbance spectra along the last axis.
    windows : EdgeWindows, keyword-only
    e0 : float, optional
        Energy at which the edge step is measured (default ``windows.edge_ev``).

    Returns
    -------
    EdgeFeatures
        Arrays of shape (...), float64; NaN where the step is not positive or
        normalized μ never rises through 0.5 in the search window.
    """
    normalized, step, noise = normalize(energy, mu, windows=windows, e0=e0)
    energy = np.asarray(energy, dtype=np.float64)
    smooth, gain = _smooth(normalized, windows.smooth_points)
    e_half, slope = _half_crossing(energy, smooth, windows.absolute("search"))
    sigma = gain * noise / step / slope
    white = _peak_energy(energy, smooth, windows.absolute("white_line"))
    return EdgeFeatures(e_half, sigma, np.where(np.isfinite(e_half), white, np.nan), step)


def edge_maps(
    absorbance: xr.DataArray, *, windows: EdgeWindows = EdgeWindows(), e0: float | None = None
) -> xr.Dataset:
    """Per-pixel edge maps of a labelled XANES stack.

    Parameters
    ----------
    absorbance : xarray.DataArray with dims (..., energy, y, x)
        Absorbance with an ``energy`` coordinate in eV. When dask-backed, it is
        rechunked so that energy is one chunk (the kernel needs whole spectra)
        and the other dims smaller (about 32 MiB per block); the result stays lazy.
    windows : EdgeWindows, keyword-only
    e0 : float, optional
        Energy at which the edge step is measured (default ``windows.edge_ev``).

    Returns
    -------
    xarray.Dataset
        ``edge_energy_ev``, ``edge_uncertainty_ev``, ``white_line_ev`` (eV) and
        ``edge_step`` (absorbance), each with dims (..., y, x), float64.

    Raises
    ------
    EnergyListError
        No ``energy`` dimension with a coordinate.
    EnergyOrderError
        Energies not strictly increasing.
    EdgeCoverageError
        A window holds too few energies.
    """
    if "energy" not in absorbance.dims or "energy" not in absorbance.coords:
        raise EnergyListError(
            f"absorbance{list(absorbance.dims)}", "no 'energy' dimension with a coordinate in eV"
        )
    energy = _check_energy(absorbance["energy"].values, windows)
    if absorbance.chunks is not None:
        absorbance = absorbance.chunk(_energy_chunks(absorbance))
    out = xr.apply_ufunc(
        _feature_block,
        absorbance,
        input_core_dims=[["energy"]],
        output_core_dims=[[]] * len(_FEATURES),
        kwargs={"energy": energy, "windows": windows, "e0": e0},
        dask="parallelized",
        output_dtypes=[np.float64] * len(_FEATURES),
    )
    attrs = {"units": "eV"}
    ds = xr.Dataset({name: arr.assign_attrs(attrs) for name, arr in zip(_FEATURES, out, strict=True)})
    ds["edge_step"].attrs = {"units": "1", "long_name": "edge step of absorbance at e0"}
    return ds.assign_attrs({f"window_{k}": str(v) for k, v in asdict(windows).items()})


def _feature_block(mu: np.ndarray, *, energy: np.ndarray, windows: EdgeWindows, e0: float | None):
    return tuple(edge_features(energy, mu, windows=windows, e0=e0))


def _energy_chunks(arr: xr.DataArray) -> dict[str, int]:
    """Energy in one chunk; y, x square tiles and other dims 1 to stay near :data:`_BLOCK_BYTES`."""
    others = [d for d in arr.dims if d not in ("energy", "y", "x")]
    per_pixel = arr.sizes["energy"] * max(arr.dtype.itemsize, 8)  # the kernel works in float64
    side = max(1, int(np.sqrt(_BLOCK_BYTES / per_pixel)))
    chunks = {"energy": -1, "y": min(side, arr.sizes.get("y", 1)), "x": min(side, arr.sizes.get("x", 1))}
    return {**{d: 1 for d in others}, **{k: v for k, v in chunks.items() if k in arr.dims}}


def _check_energy(energy: np.ndarray, windows: EdgeWindows) -> np.ndarray:
    energy = np.asarray(energy, dtype=np.float64)
    if energy.ndim != 1 or np.any(np.diff(energy) <= 0):
        raise EnergyOrderError("energy", f"energies must be 1-D and strictly increasing, got {energy[:5]}...")
    need = {"pre": 2, "post": windows.post_degree + 1, "search": 2, "white_line": 3}
    for name, n in need.items():
        lo, hi = windows.absolute(name)
        have = int(np.count_nonzero((energy >= lo) & (energy <= hi)))
        if have < n:
            raise EdgeCoverageError(
                f"energy ({energy[0]:.1f}-{energy[-1]:.1f} eV)",
                f"{name} window {lo:.1f}-{hi:.1f} eV holds {have} energies, needs {n}",
            )
    return energy


def _fit_window(
    energy: np.ndarray, mu: np.ndarray, window: tuple[float, float], degree: int, e0: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polynomial fit of every spectrum over ``window``: curve (..., E), value at e0 (...), residual std (...)."""
    inside = (energy >= window[0]) & (energy <= window[1])
    # Centred on e0 so the constant term is the value at e0 and the system is well conditioned.
    design = np.vander(energy - e0, degree + 1)
    rhs = mu[..., inside].reshape(-1, int(inside.sum())).T
    coef = np.linalg.lstsq(design[inside], rhs, rcond=None)[0]
    resid = rhs - design[inside] @ coef
    dof = max(int(inside.sum()) - degree - 1, 1)
    noise = np.sqrt(np.sum(resid**2, axis=0) / dof).reshape(mu.shape[:-1])
    curve = (design @ coef).T.reshape(mu.shape)
    return curve, coef[-1].reshape(mu.shape[:-1]), noise


def _smooth(normalized: np.ndarray, points: int) -> tuple[np.ndarray, float]:
    """Savitzky–Golay smoothing along energy and its white-noise gain (1 when off)."""
    if points < 3:
        return normalized, 1.0
    gain = float(np.linalg.norm(savgol_coeffs(points, 2)))
    return savgol_filter(normalized, points, 2, axis=-1, mode="nearest"), gain


def _half_crossing(
    energy: np.ndarray, norm: np.ndarray, window: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Energy of the first rise of ``norm`` through 0.5 in ``window`` and the slope there."""
    inside = (energy >= window[0]) & (energy <= window[1])
    rise = (norm[..., :-1] < 0.5) & (norm[..., 1:] >= 0.5) & inside[:-1] & inside[1:]
    i = np.argmax(rise, axis=-1)[..., None]
    y0 = np.take_along_axis(norm, i, axis=-1)[..., 0]
    y1 = np.take_along_axis(norm, i + 1, axis=-1)[..., 0]
    e_lo, e_hi = energy[i[..., 0]], energy[i[..., 0] + 1]
    slope = (y1 - y0) / (e_hi - e_lo)
    found = rise.any(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        e_half = e_lo + (0.5 - y0) / slope
    return np.where(found, e_half, np.nan), np.where(found, slope, np.nan)


def _peak_energy(energy: np.ndarray, norm: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Energy of the maximum of ``norm`` in ``window``, refined by a parabola through 3 points."""
    inside = (energy >= window[0]) & (energy <= window[1])
    masked = np.where(inside, np.nan_to_num(norm, nan=-np.inf), -np.inf)
    i = np.clip(np.argmax(masked, axis=-1), 1, energy.size - 2)[..., None]
    y = [np.take_along_axis(norm, i + k, axis=-1)[..., 0] for k in (-1, 0, 1)]
    # Energies relative to the middle point: avoids cancellation in E² at ~8 keV.
    x0, x2 = energy[i[..., 0] - 1] - energy[i[..., 0]], energy[i[..., 0] + 1] - energy[i[..., 0]]
    d0, d2 = (y[0] - y[1]) / x0, (y[2] - y[1]) / x2
    curvature = (d2 - d0) / (x2 - x0)
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < 0, x0 / 2 - d0 / (2 * curvature), 0.0)
    return energy[i[..., 0]] + np.clip(offset, x0, x2)
