"""operando.config: defaults, OPERANDO_* environment overrides, config.set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from operando.config import config
from operando.errors import ConfigError
from operando.io.codecs import CODECS, compressors
from operando.io.store import write_dataset


@pytest.fixture
def env(monkeypatch):
    """monkeypatch.setenv, then config.refresh() sees it; restored afterwards."""
    yield monkeypatch
    monkeypatch.undo()
    config.refresh()


def test_defaults():
    assert config.get("chunks.target_mib") == 96
    assert config.get("chunks.energy") == 16
    assert config.get("codec.name") == "blosc-zstd"
    assert config.get("codec.level") == 3
    assert config.get("codec.name") in CODECS


def test_env_override_after_refresh(env):
    env.setenv("OPERANDO_CHUNKS__TARGET_MIB", "32")
    env.setenv("OPERANDO_CODEC__NAME", "zstd")
    config.refresh()
    assert config.get("chunks.target_mib") == 32
    assert config.get("codec.name") == "zstd"
    assert config.get("chunks.energy") == 16


def test_env_override_in_a_fresh_process(tmp_path):
    out = tmp_path / "a.zarr"
    code = (
        "import json, sys, numpy as np\n"
        "from operando.config import config\n"
        "from operando.io.layout import ct_dataset\n"
        "from operando.io.store import write_dataset\n"
        "write_dataset(ct_dataset(np.zeros((1, 4, 4, 4), 'f4'), voxel_size_um=1), sys.argv[1])\n"
        "print(json.dumps([config.get('chunks.target_mib'), config.get('codec.name')]))\n"
    )
    environ = {**os.environ, "OPERANDO_CHUNKS__TARGET_MIB": "8", "OPERANDO_CODEC__NAME": "zstd"}
    res = subprocess.run(
        [sys.executable, "-c", code, str(out)], env=environ, capture_output=True, text=True, check=True
    )
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [8, "zstd"]
    meta = json.loads((out / "intensity" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "zstd"]


def test_set_is_a_context_manager_that_restores():
    with config.set({"chunks.target_mib": 8, "codec.name": "none"}):
        assert config.get("chunks.target_mib") == 8
        assert config.get("codec.name") == "none"
        with config.set({"chunks.target_mib": 4}):
            assert config.get("chunks.target_mib") == 4
        assert config.get("chunks.target_mib") == 8
    assert config.get("chunks.target_mib") == 96
    assert config.get("codec.name") == "blosc-zstd"


def test_set_restores_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"), config.set({"codec.level": 9}):
        raise RuntimeError("boom")
    assert config.get("codec.level") == 3


def test_unknown_codec_is_a_config_error():
    with pytest.raises(ConfigError, match=r"codec\.name: unknown codec 'lz5'\. Use one of \('blosc-zstd'"):
        compressors("lz5")


def test_unknown_codec_in_config_refuses_before_writing(tmp_path):
    import numpy as np

    from operando.io.layout import ct_dataset

    ds = ct_dataset(np.zeros((1, 2, 2, 2), np.float32), voxel_size_um=1)
    with config.set({"codec.name": "gzip"}), pytest.raises(ConfigError, match="unknown codec 'gzip'"):
        write_dataset(ds, tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
