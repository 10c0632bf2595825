"""predict: seam-exact patch inference over zarr, checked against oracles and the whole-array pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from operando.engine import predict as predict_module
from operando.engine.cluster import local_cluster
from operando.engine.patches import PatchGrid, halo_for, labels_from_logits, predict_array, probabilities
from operando.engine.predict import ModelRecipe, _workers_have_gpus, grid_halo, predict, worker_device
from operando.errors import DeviceUnavailableError, ModelOutputError


def _identity_recipe() -> ModelRecipe:
    """1×1 conv: channel 0 = 0.5 (bias), channel 1 = x, so argmax = (x > 0.5)."""
    conv = torch.nn.Conv2d(1, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 0.0]))
    return ModelRecipe.from_module(
        conv, factory=torch.nn.Conv2d, kwargs={"in_channels": 1, "out_channels": 2, "kernel_size": 1}
    )


class SmallNet(torch.nn.Module):
    """Two 3×3 convs: a receptive field that crosses patch and chunk borders."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _arrays(tmp_path, data: np.ndarray, chunks, name: str = "run"):
    root = tmp_path / f"{name}.zarr"
    src = zarr.create_array(store=str(root / "src"), shape=data.shape, chunks=data.shape, dtype=data.dtype)
    src[...] = data
    out = zarr.create_array(store=str(root / "labels"), shape=data.shape, chunks=chunks, dtype="uint8")
    return src, out


@pytest.mark.parametrize("chunks", [(8, 8), (5, 7), (23, 3), (1, 40)])
def test_identity_oracle_labels_equal_input(tmp_path, chunks):
    data = (np.random.default_rng(1).random((23, 40)) > 0.5).astype(np.uint8)
    src, out = _arrays(tmp_path, data, chunks)
    report = predict(src, _identity_recipe(), out, patch=(8, 6), overlap=0.5, device="cpu")
    assert report.chunks_done == report.chunks_total
    np.testing.assert_array_equal(out[...], data)


def test_identity_oracle_cross_sections_of_a_volume(tmp_path):
    data = (np.random.default_rng(2).random((4, 13, 17)) > 0.5).astype(np.float32)
    src, out = _arrays(tmp_path, data, (3, 5, 6))
    predict(src, _identity_recipe(), out, patch=6, axes=(1, 2), blend="gaussian")
    np.testing.assert_array_equal(out[...], data.astype(np.uint8))


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_labels_independent_of_chunking_and_equal_whole_array_pass(tmp_path, blend):
    torch.manual_seed(0)
    net = SmallNet().eval()
    data = np.random.default_rng(3).normal(size=(30, 27)).astype(np.float32)
    opts = {"patch": (10, 8), "overlap": 0.3, "blend": blend, "batch_size": 4}
    expected = labels_from_logits(predict_array(data, net, **opts))
    got = []
    for i, chunks in enumerate([(7, 9), (16, 4)]):
        src, out = _arrays(tmp_path, data, chunks, name=f"c{i}")
        predict(src, net, out, device="cpu", **opts)
        got.append(out[...])
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[0], expected)
    assert len(np.unique(expected)) > 1  # a non-trivial labelling


def test_halo_covers_every_touching_patch_and_no_more_than_a_patch():
    grid = PatchGrid.build((37, 29), patch=(9, 7), overlap=0.25)
    halo = grid_halo(grid, (5, 6))
    assert all(h <= p - 1 for h, p in zip(halo, grid.patch, strict=True))
    for y in range(0, 37, 5):
        for x in range(0, 29, 6):
            region = (slice(y, min(y + 5, 37)), slice(x, min(x + 6, 29)))
            read = halo_for(grid, region).read
            for r, s, h in zip(read, region, halo, strict=True):
                assert s.start - h <= r.start and r.stop <= s.stop + h


def test_rerun_reuses_every_chunk(tmp_path):
    data = (np.random.default_rng(4).random((16, 16)) > 0.5).astype(np.uint8)
    src, out = _arrays(tmp_path, data, (8, 8))
    predict(src, _identity_recipe(), out, patch=8)
    again = predict(src, _identity_recipe(), out, patch=8)
    assert (again.chunks_done, again.chunks_reused) == (0, 4)
    np.testing.assert_array_equal(out[...], data)


def test_distributed_cluster_matches_oracle(tmp_path, client):
    data = (np.random.default_rng(5).random((24, 20)) > 0.5).astype(np.uint8)
    src, out = _arrays(tmp_path, data, (8, 10))
    report = predict(src, _identity_recipe(), out, patch=(8, 8), client=client)
    assert report.chunks_done == 6
    np.testing.assert_array_equal(out[...], data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    data = np.zeros((8, 8), np.uint8)
    src, out = _arrays(tmp_path, data, (8, 8))
    with pytest.raises(DeviceUnavailableError, match="CUDA was requested but no GPU"):
        predict(src, _identity_recipe(), out, patch=4, device="cuda")


def test_probabilities_are_the_softmax_of_the_whole_array_pass(tmp_path):
    torch.manual_seed(1)
    net = SmallNet().eval()
    data = np.random.default_rng(6).normal(size=(21, 19)).astype(np.float32)
    opts = {"patch": (8, 8), "overlap": 0.25, "blend": "gaussian"}
    logits = predict_array(data, net, **opts)
    src, out = _arrays(tmp_path, data, (6, 10))
    probs = zarr.create_array(
        store=str(tmp_path / "run.zarr" / "probabilities"),
        shape=(3, 21, 19),
        chunks=(3, 6, 10),
        dtype="float16",
    )
    predict(src, net, out, out_probabilities=probs, device="cpu", **opts)
    np.testing.assert_array_equal(out[...], labels_from_logits(logits))
    np.testing.assert_array_equal(probs[...], probabilities(logits))
    np.testing.assert_allclose(probs[...].astype(np.float32).sum(axis=0), 1.0, atol=3e-3)


def test_probabilities_with_the_wrong_class_count_are_refused_before_running(tmp_path):
    data = np.zeros((8, 8), np.float32)
    src, out = _arrays(tmp_path, data, (4, 4))
    probs = zarr.create_array(
        store=str(tmp_path / "run.zarr" / "probabilities"), shape=(5, 8, 8), chunks=(5, 4, 4), dtype="float16"
    )
    with pytest.raises(ModelOutputError, match="3 output channels, but the probabilities array has 5"):
        predict(src, SmallNet(), out, out_probabilities=probs, patch=4)
    assert out.nchunks_initialized == 0


class Shrinks(torch.nn.Module):
    """A model without padding: its output is smaller than its input patch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_model_output_of_the_wrong_shape_is_a_clear_error(tmp_path):
    src, out = _arrays(tmp_path, np.zeros((8, 8), np.float32), (4, 4))
    with pytest.raises(
        ModelOutputError, match=r"output \(1, 2, 4, 4\) for one patch, expected \(1, C, 6, 6\)"
    ):
        predict(src, Shrinks(), out, patch=6)


@contextlib.contextmanager
def _gpu_resource_client() -> Iterator[Any]:
    """A client of one worker (2 threads) that advertises the resource ``GPU``."""
    distributed = pytest.importorskip("distributed")
    with (
        local_cluster(
            n_workers=1, threads_per_worker=2, resources={"GPU": 1}, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_gpu_resource_is_requested_only_where_workers_have_gpus(client, tmp_path):
    assert not _workers_have_gpus(client)
    data = (np.random.default_rng(8).random((12, 12)) > 0.5).astype(np.uint8)
    src, out = _arrays(tmp_path, data, (6, 6))
    with _gpu_resource_client() as gpu_client:
        assert _workers_have_gpus(gpu_client)
        # device="auto" on a worker without CUDA falls back to the CPU; the tasks hold the resource.
        predict(src, _identity_recipe(), out, patch=6, client=gpu_client)
    np.testing.assert_array_equal(out[...], data)


def test_worker_device_is_the_cpu_without_a_gpu():
    if torch.cuda.is_available():
        assert worker_device("auto").startswith("cuda:")
    else:
        assert worker_device("auto") == "cpu"
    assert worker_device("cpu") == "cpu"


# --------------------------------------------------------------------------- 2.5D context


class ContextNet(torch.nn.Module):
    """Two 3×3 convs over the slice and its k neighbours per side (2k + 1 channels)."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(2 * k + 1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize(("chunks", "axes", "k"), [((1, 9, 7, 5), (1, 2), 2), ((2, 3, 11, 4), (2, 3), 1)])
def test_context_labels_across_chunk_borders_equal_the_whole_array_pass(tmp_path, chunks, axes, k):
    """Chunks thinner than the context along the context axis: halos reach into neighbour chunks."""
    torch.manual_seed(k)
    net = ContextNet(k).eval()
    recipe = ModelRecipe.from_module(net, kwargs={"k": k})
    data = np.random.default_rng(5).normal(size=(2, 9, 22, 13)).astype(np.float32)
    opts = {"patch": 8, "overlap": 0.25, "axes": axes, "context": k, "batch_size": 4}
    expected = labels_from_logits(predict_array(data, net, **opts))
    src, out = _arrays(tmp_path, data, chunks)
    report = predict(src, recipe, out, device="cpu", **opts)
    assert report.chunks_done == report.chunks_total > 4
    np.testing.assert_array_equal(out[...], expected)
    assert len(np.unique(expected)) > 1


def test_context_halo_is_k_along_the_context_axis():
    grid = PatchGrid.build((2, 9, 22, 13), patch=8, axes=(1, 2), context=3)
    halo = grid_halo(grid, (1, 4, 8, 5))
    assert halo[0] == 0 and halo[3] == 3


def test_context_model_with_one_channel_is_refused_before_running(tmp_path):
    src, out = _arrays(tmp_path, np.zeros((4, 8, 8), np.float32), (2, 8, 8))
    with pytest.raises(ModelOutputError, match=r"fails on one \(1, 3, 8, 8\) patch.*Context 1 feeds 3"):
        predict(src, SmallNet().eval(), out, patch=8, axes=(1, 2), context=1, device="cpu")
    assert not out.nchunks_initialized


@pytest.mark.parametrize("slab", [1, 100, 10**9])
def test_chunks_predicted_slab_by_slab_equal_the_whole_array_pass(tmp_path, monkeypatch, slab):
    """A task predicts its chunk in slabs along a non-patch axis: same labels and probabilities."""
    monkeypatch.setattr(predict_module, "_SLAB_VOXELS", slab)  # local threads: the kernel sees it
    torch.manual_seed(2)
    net = ContextNet(1).eval()
    data = np.random.default_rng(8).normal(size=(2, 9, 22, 13)).astype(np.float32)
    opts = {"patch": 8, "overlap": 0.25, "axes": (1, 2), "context": 1, "blend": "gaussian"}
    logits = predict_array(data, net, **opts)
    src, out = _arrays(tmp_path, data, (2, 9, 11, 13))
    probs = zarr.create_array(
        store=str(tmp_path / "run.zarr" / "probabilities"),
        shape=(3, *data.shape),
        chunks=(3, 2, 9, 11, 13),
        dtype="float16",
    )
    predict(
        src, ModelRecipe.from_module(net, kwargs={"k": 1}), out, out_probabilities=probs, device="cpu", **opts
    )
    np.testing.assert_array_equal(out[...], labels_from_logits(logits))
    np.testing.assert_array_equal(probs[...], probabilities(logits))


# --------------------------------------------------------------------------- GPU (skipped without one)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("autocast", [False, True])
def test_gpu_identity_oracle_is_exact(tmp_path, autocast):
    data = (np.random.default_rng(9).random((4, 33, 29)) > 0.5).astype(np.float32)
    src, out = _arrays(tmp_path, data, (2, 16, 10))
    predict(src, _identity_recipe(), out, patch=8, axes=(1, 2), device="cuda", autocast=autocast)
    np.testing.assert_array_equal(out[...], data.astype(np.uint8))


@needs_cuda
def test_gpu_labels_match_the_cpu_pass(tmp_path):
    torch.manual_seed(0)
    net = SmallNet().eval()
    data = np.random.default_rng(10).normal(size=(64, 48)).astype(np.float32)
    opts = {"patch": (16, 16), "overlap": 0.25, "blend": "gaussian", "batch_size": 4}
    labels = []
    for device in ("cpu", "cuda"):
        src, out = _arrays(tmp_path, data, (20, 24), name=device)
        predict(src, net, out, device=device, **opts)
        labels.append(out[...])
    # float32 on both: only near-ties of two logits may differ (reduction order, TF32)
    assert np.mean(labels[0] != labels[1]) < 1e-3


@needs_cuda
def test_gpu_workers_hold_the_gpu_resource_and_run_on_cuda(tmp_path):
    data = (np.random.default_rng(11).random((24, 24)) > 0.5).astype(np.uint8)
    src, out = _arrays(tmp_path, data, (8, 8))
    with _gpu_resource_client() as gpu_client:
        devices = gpu_client.run(worker_device, "auto")
        assert all(d.startswith("cuda:") for d in devices.values()), devices
        predict(src, _identity_recipe(), out, patch=8, client=gpu_client)
    np.testing.assert_array_equal(out[...], data)
