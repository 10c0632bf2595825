"""Athena project and XDI readers: safe parsing (no eval), real files when present."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from operando.errors import InputNotFoundError, UnsupportedFormatError
from operando.io.athena import read_athena, read_xdi

XAS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "xas"

PROJECT = """# Athena project file -- Demeter version 0.9.21
# a hand-written two-group project

$old_group = 'abcde';
@args = ('label','foil\\'s one','titles2',[],'titles',['a','b'],'bkg_e0','8333.5','bkg_step','0.83','bkg_nnorm','3','bkg_z','Ni');
@x = ('8300','8310.5','8320');
@y = ('0.1','0.2','0.9');
$xdi = bless( {'system' => `rm -rf /`}, 'Xray::XDI' );
[record]   # create object

$old_group = 'fghij';
@args = ('bkg_e0',8345,'label','second');
@x = (1,2);
@y = (3,4);
[record]
1;
"""


def test_reads_groups_arrays_and_bkg_params(tmp_path):
    path = tmp_path / "two.prj"
    with gzip.open(path, "wt") as f:
        f.write(PROJECT)
    first, second = read_athena(path)
    assert first.name == "abcde" and first.label == "foil's one"
    np.testing.assert_array_equal(first.energy, [8300.0, 8310.5, 8320.0])
    np.testing.assert_array_equal(first.mu, [0.1, 0.2, 0.9])
    assert first.params == {"bkg_e0": 8333.5, "bkg_step": 0.83, "bkg_nnorm": 3.0}  # bkg_z is not a number
    assert second.params["bkg_e0"] == 8345.0 and second.label == "second"
    (tmp_path / "plain.prj").write_text(PROJECT)
    assert len(read_athena(tmp_path / "plain.prj")) == 2


def test_bad_athena_inputs(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such Athena project"):
        read_athena(tmp_path / "missing.prj")
    (tmp_path / "x.prj").write_text("hello\n")
    with pytest.raises(UnsupportedFormatError, match="not '# Athena project file'"):
        read_athena(tmp_path / "x.prj")
    (tmp_path / "y.prj").write_text(PROJECT.replace("@y = ('0.1','0.2','0.9');\n", ""))
    with pytest.raises(UnsupportedFormatError, match="group 'abcde' has no @x/@y"):
        read_athena(tmp_path / "y.prj")


def test_xdi_columns_and_header(tmp_path):
    path = tmp_path / "s.xdi"
    path.write_text(
        "# XDI/1.0\n# Column.1: energy eV\n# Column.2: i0\n# Element.symbol: Ni\n# ///\n#--\n1 10\n2 20\n"
    )
    cols, header = read_xdi(path)
    np.testing.assert_array_equal(cols["energy"], [1, 2])
    np.testing.assert_array_equal(cols["i0"], [10, 20])
    assert header["Element.symbol"] == "Ni"
    (tmp_path / "bad.xdi").write_text("energy i0\n1 2\n")
    with pytest.raises(UnsupportedFormatError, match="not an XDI version line"):
        read_xdi(tmp_path / "bad.xdi")
    with pytest.raises(InputNotFoundError):
        read_xdi(tmp_path / "none.xdi")


def test_real_nio_project():
    path = XAS / "athena" / "NiO.prj"
    if not path.exists():
        pytest.skip("NiO.prj not available")
    groups = read_athena(path)
    assert len(groups) == 24
    nio = groups[0]
    assert nio.label == "NiO.000" and nio.energy.shape == nio.mu.shape == (522,)
    assert nio.params["bkg_e0"] == pytest.approx(8344.00143)
    assert nio.params["bkg_step"] == pytest.approx(0.7797419)
    assert (nio.params["bkg_pre1"], nio.params["bkg_pre2"]) == (-150.0, -30.0)
    assert (nio.params["bkg_nor1"], nio.params["bkg_nor2"], nio.params["bkg_nnorm"]) == (150.0, 1125.97, 3.0)
    assert np.all(np.diff(nio.energy) > 0)


def test_real_xdi():
    path = XAS / "xasdatalibrary" / "NiOH2_rt_01.xdi"
    if not path.exists():
        pytest.skip("XDI data not available")
    cols, header = read_xdi(path)
    assert set(cols) == {"energy", "i0", "itrans", "irefer"}
    assert header["Element.edge"] == "K" and cols["energy"].size == 435
