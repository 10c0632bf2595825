"""A real distributed cluster (two worker processes) shared by the engine tests."""

from __future__ import annotations

import pytest

from operando.engine.cluster import local_cluster


@pytest.fixture(scope="session")
def client():
    """``distributed.Client`` on a LocalCluster of 2 single-thread worker processes, 1 GiB each."""
    distributed = pytest.importorskip("distributed")
    with (
        local_cluster(
            n_workers=2, threads_per_worker=1, memory_limit="1GiB", dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client
