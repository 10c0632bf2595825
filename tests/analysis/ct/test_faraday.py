"""Faraday's law for the traveling Li, checked against hand-computed values from the paper."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.analysis.ct.faraday import (
    compare_with_ct,
    ct_volume_change,
    parse_segments,
    traveling_li,
)
from operando.errors import ConfigError, ShapeMismatchError

# The paper's GITT schedule: 1.5 mA cm⁻² for 10 min, then ~20 min rest, 12 charging periods.
PAPER_SEGMENTS = [(30.0 * k, 30.0 * k + 10.0) for k in range(12)]
PAPER_ROI_UM2 = 1707 * 2280 * 1.33**2


def test_one_period_of_the_paper_is_1_2129_um():
    # By hand: 1.5 mA/cm² × 10/60 h = 0.25 mAh/cm²; / 3860 mAh/g = 6.4767e-5 g/cm²;
    # / 0.534 g/cm³ = 1.21286e-4 cm = 1.21286 µm.
    out = traveling_li([10.0], area_cm2=1.0, current_density_ma_cm2=1.5, segments_min=[(0, 10)])
    assert out.charge_mah.item() == pytest.approx(0.25, rel=1e-12)
    assert out.li_mass_g.item() == pytest.approx(6.476684e-5, rel=1e-6)
    assert out.faraday_thickness_um.item() == pytest.approx(1.2128622, rel=1e-7)
    # 1 cm² × 1.21286e-4 cm = 1.21286e-4 cm³ = 1.21286e8 µm³.
    assert out.faraday_volume_um3.item() == pytest.approx(1.2128622e8, rel=1e-7)


def test_full_charge_of_the_paper_over_its_roi():
    # 12 periods = 3.0 mAh/cm² (the paper's areal capacity) → 14.5543 µm of Li; over the
    # ROI of 6.88449e6 µm² that is 1.00199e8 µm³.
    times = [0.0, 10.0, 25.0, 40.0, 340.0, 400.0]
    out = traveling_li(times, area_um2=PAPER_ROI_UM2, current_density_ma_cm2=1.5, segments_min=PAPER_SEGMENTS)
    np.testing.assert_allclose(
        out.faraday_thickness_um, [0.0, 1.2128622, 1.2128622, 2.4257243, 14.5543459, 14.5543459], rtol=1e-7
    )
    assert out.faraday_volume_um3[-1].item() == pytest.approx(1.0019922e8, rel=1e-7)
    assert out.attrs["area_um2"] == pytest.approx(6884488.044)


def test_area_in_cm2_and_um2_agree_and_thickness_does_not_depend_on_area():
    kw = {"current_density_ma_cm2": 1.5, "segments_min": [(0, 10), (30, 40)]}
    a = traveling_li([5.0, 35.0], area_cm2=0.5, **kw)
    b = traveling_li([5.0, 35.0], area_um2=0.5e8, **kw)
    c = traveling_li([5.0, 35.0], area_cm2=2.0, **kw)
    xr.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a.faraday_thickness_um, c.faraday_thickness_um)
    np.testing.assert_allclose(c.faraday_volume_um3, 4 * a.faraday_volume_um3)


def test_current_table_equals_segments_for_a_step_current():
    # A logged step current, 1.5 mA on 1 cm² during 0–10 and 30–40 min; discharge is negative.
    t = [0.0, 10.0, 10.0001, 30.0, 30.0001, 40.0, 40.0001, 60.0]
    i = [1.5, 1.5, 0.0, 0.0, -1.5, -1.5, 0.0, 0.0]
    times = [10.0, 40.0, 60.0]
    table = traveling_li(times, area_cm2=1.0, current_table=(t, i))
    segs = traveling_li(times, area_cm2=1.0, current_density_ma_cm2=1.5, segments_min=[(0, 10), (30, 40)])
    np.testing.assert_allclose(table.charge_mah, segs.charge_mah, rtol=1e-4)
    net = traveling_li(times, area_cm2=1.0, current_table=(t, i), signed=True)
    np.testing.assert_allclose(net.charge_mah, [0.25, 0.0, 0.0], atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0.5, 20), min_size=1, max_size=5),
    st.lists(st.floats(0.5, 20), min_size=5, max_size=5),
    st.floats(0.1, 10),
)
def test_total_charge_is_current_times_on_time(durations, gaps, density):
    starts = np.cumsum(np.asarray(gaps[: len(durations)]) + np.r_[0, durations[:-1]])
    segments = np.column_stack([starts, starts + durations])
    end = float(segments[-1, 1]) + 1.0
    out = traveling_li([end], area_cm2=1.0, current_density_ma_cm2=density, segments_min=segments[::-1])
    assert out.charge_mah.item() == pytest.approx(density * sum(durations) / 60.0, rel=1e-9)


def test_parse_segments():
    np.testing.assert_array_equal(parse_segments("30:40, 0:10"), [[0, 10], [30, 40]])
    with pytest.raises(ConfigError, match="'0-10' is not start:end"):
        parse_segments("0-10")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"segments_min": [(10, 5)]}, "segment 10:5 min has a non-positive duration"),
        ({"segments_min": [(0, 5, 9)]}, "are not finite .start_min, end_min. pairs"),
        ({"segments_min": [(0, np.nan)]}, "are not finite"),
        ({"segments_min": [(0, 10), (5, 20)]}, "segments 0:10 and 5:20 min overlap"),
        ({"segments_min": [(0, 10)], "area_cm2": 0.0}, "area 0.0 µm² must be a positive"),
        ({"segments_min": [(0, 10)], "area_cm2": -1.0}, "area -100000000.0 µm²"),
        ({"segments_min": [(0, 10)], "times": [0, 5, 5]}, "5 min is followed by 5 min"),
        ({"segments_min": [(0, 10)], "times": [3, 1]}, "3 min is followed by 1 min"),
        ({"segments_min": [(0, 10)], "current_density_ma_cm2": -1.5}, "current density -1.5"),
        ({"segments_min": [(0, 10)], "area_um2": 1.0}, "exactly one area"),
        ({"segments_min": None, "current_density_ma_cm2": None}, "either current_density"),
    ],
)
def test_bad_input_raises_config_error(kwargs, match):
    call = {"area_cm2": 1.0, "current_density_ma_cm2": 1.5, **kwargs}
    times = call.pop("times", [0.0, 10.0])
    with pytest.raises(ConfigError, match=match):
        traveling_li(times, **call)


def test_bad_current_table_raises_config_error():
    with pytest.raises(ConfigError, match="2 currents for 3 times"):
        traveling_li([1.0], area_cm2=1.0, current_table=([0, 4, 6], [1, 1]))
    with pytest.raises(ConfigError, match=r"current_table time.*4 min is followed by 2 min"):
        traveling_li([1.0], area_cm2=1.0, current_table=([0, 4, 2], [1, 1, 1]))


def _stats(times, volumes):
    classes = ["background", "deposited_li", "dendrite"]
    return xr.Dataset(
        {"volume_um3": (("time", "class"), np.asarray(volumes, dtype=np.float64))},
        coords={"time": times, "class": classes},
    )


def test_compare_with_ct_against_hand_values():
    times = [0.0, 10.0, 40.0]
    stats = _stats(times, [[9e9, 1e8, 2e7], [9e9, 1.5e8, 3e7], [9e9, 2e8, 4e7]])
    measured = ct_volume_change(stats)
    np.testing.assert_allclose(measured, [0.0, 6e7, 1.2e8])
    faraday = traveling_li(times, area_cm2=1.0, current_density_ma_cm2=1.5, segments_min=[(0, 10), (30, 40)])
    cmp = compare_with_ct(faraday, measured)
    assert set(cmp.data_vars) == {"faraday_volume_um3", "measured_volume_um3", "ratio"}
    assert np.isnan(cmp.ratio[0])
    # Faraday: 1.21286e8 µm³ per period on 1 cm².
    np.testing.assert_allclose(cmp.ratio[1:], [6e7 / 1.2128622e8, 1.2e8 / 2.4257243e8], rtol=1e-7)


def test_compare_with_ct_stays_lazy_on_dask_statistics():
    times = [0.0, 10.0]
    stats = _stats(times, [[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]]).chunk({"time": 1})
    faraday = traveling_li(times, area_cm2=1.0, current_density_ma_cm2=1.5, segments_min=[(0, 10)])
    cmp = compare_with_ct(faraday, ct_volume_change(stats))
    assert cmp.measured_volume_um3.chunks is not None
    np.testing.assert_allclose(cmp.measured_volume_um3.values, [0.0, 3.0])


def test_compare_with_ct_needs_the_same_times():
    faraday = traveling_li([0.0, 10.0], area_cm2=1.0, current_density_ma_cm2=1.5, segments_min=[(0, 10)])
    measured = xr.DataArray([0.0, 1.0], coords={"time": [0.0, 12.0]}, dims="time")
    with pytest.raises(ShapeMismatchError, match=r"times \[0.0, 12.0\] differ"):
        compare_with_ct(faraday, measured)


def test_ct_volume_change_rejects_unknown_class():
    with pytest.raises(ConfigError, match="'pits'"):
        ct_volume_change(_stats([0.0], [[1, 2, 3]]), ["pits"])
