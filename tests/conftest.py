"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from operando.engine.cluster import local_cluster


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real measured data kept beside the repository); skips when absent."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"../shared/data is absent ({path}); the tests on real data need it")
    return path


@pytest.fixture(scope="session")
def client():
    """``distributed.Client`` on a LocalCluster of 2 single-thread worker processes, 1 GiB each.

    3 GiB each where torch sees a GPU: a worker's CUDA context alone holds ~750 MiB of
    host memory (seen on an H100), and the nanny restarts a 1 GiB worker that made one.
    Not the default client: code under test reaches it only when it is passed in.
    """
    distributed = pytest.importorskip("distributed")
    import torch

    limit = "3GiB" if torch.cuda.is_available() else "1GiB"
    with (
        local_cluster(
            n_workers=2, threads_per_worker=1, memory_limit=limit, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client
