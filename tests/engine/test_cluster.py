"""operando.engine.cluster on real clusters: local worker processes, an existing scheduler, SLURM."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

from operando.config import config
from operando.engine.cluster import (
    ClusterSpec,
    add_cluster_arguments,
    connect,
    jobqueue_kwargs,
    local_cluster,
    local_sizing,
    spec_from_args,
)
from operando.errors import ConfigError

MIB = 2**20
REPO = Path(__file__).resolve().parents[2]


def _array_sum(client) -> None:
    x = da.arange(200_000, chunks=10_000, dtype="int64")
    assert client.compute(x.sum()).result() == 199_999 * 200_000 // 2


# --- local worker processes -----------------------------------------------------------


@pytest.fixture(scope="module")
def local_client():
    lines: list[str] = []
    spec = ClusterSpec(jobs=2, cores=1, memory="768MiB", dashboard_address=":0")
    with connect(spec, echo=lines.append) as client:
        yield spec, client, lines


def test_local_cluster_computes_with_the_spec_memory_limit(local_client):
    spec, client, lines = local_client
    _array_sum(client)
    workers = client.scheduler_info()["workers"].values()
    assert len(workers) == 2
    assert {w["memory_limit"] for w in workers} == {768 * MIB}
    assert {w["nthreads"] for w in workers} == {1}
    assert spec.worker_memory_limit() == 768 * MIB
    # worker processes, not threads of this process
    pids = set(client.run(lambda: __import__("os").getpid()).values())
    assert len(pids) == 2 and __import__("os").getpid() not in pids
    assert lines[0] == "operando: local cluster: 2 worker processes × 1 threads, 768.00 MiB each"
    assert lines[1].startswith("operando: dask dashboard at http")


def _worker_env(client, name: str) -> set[str | None]:
    return set(client.run(lambda: __import__("os").environ.get(name)).values())


def test_local_workers_keep_the_heap_for_torch_sized_allocations(local_client):
    # distributed's MALLOC_TRIM_THRESHOLD_ pins glibc's mmap threshold at 128 KiB
    # (every activation a fresh mmap); operando's workers raise it.
    _, client, _ = local_client
    assert _worker_env(client, "MALLOC_MMAP_THRESHOLD_") == {str(24 * MIB)}
    assert _worker_env(client, "MALLOC_TRIM_THRESHOLD_") == {"65536"}  # distributed's, kept


def test_the_users_worker_environment_wins(monkeypatch):
    from distributed import Client

    # distributed's nanny copies the worker environment into this process's, where it
    # would win over the config (its own precedence); start from a clean one
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 4096}),
        local_cluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        assert _worker_env(client, "MALLOC_MMAP_THRESHOLD_") == {"4096"}


def test_existing_scheduler_address(local_client):
    _, client, _ = local_client
    address = client.scheduler.address
    lines: list[str] = []
    with connect(ClusterSpec(kind=address), echo=lines.append) as other:
        assert other.scheduler.address == address
        _array_sum(other)
    assert lines[0] == f"operando: scheduler at {address}"
    _array_sum(client)  # the scheduler outlives the second client


def test_local_sizing_defaults_fit_the_machine():
    import psutil

    n, threads, memory = local_sizing(ClusterSpec())
    assert 1 <= n and 1 <= threads and n * threads <= max(2, psutil.cpu_count())
    assert n * memory <= 0.9 * psutil.virtual_memory().total + 1
    assert local_sizing(ClusterSpec(jobs=3, cores=2, memory="1GiB")) == (3, 2, 2**30)


def test_local_gpu_resource():
    spec = ClusterSpec(jobs=1, cores=1, memory="300MiB", gpus_per_job=1, dashboard_address=None)
    with connect(spec, echo=None) as client:
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["resources"] == {"GPU": 1}
        assert client.submit(lambda: 7, resources={"GPU": 1}).result() == 7


# --- job-queue arguments (no batch system needed) ---------------------------------------


def test_jobqueue_memory_limit_below_job_memory():
    spec = ClusterSpec(kind="slurm", jobs=2, cores=4, memory="10GB", processes=2)
    kwargs = jobqueue_kwargs(spec)
    assert kwargs["memory"] == "10000000000B"
    assert kwargs["processes"] == 2 and kwargs["cores"] == 4
    limit = int(kwargs["worker_extra_args"][kwargs["worker_extra_args"].index("--memory-limit") + 1])
    assert limit == spec.worker_memory_limit() == 4_500_000_000  # 90% of 10 GB over 2 workers
    assert "job_extra_directives" not in kwargs


def test_jobqueue_memory_limit_reaches_the_job_script():
    from dask_jobqueue import SLURMCluster

    spec = ClusterSpec(kind="slurm", cores=1, memory="2GB", dashboard_address=None)
    with SLURMCluster(**jobqueue_kwargs(spec)) as cluster:
        script = cluster.job_script()
    assert "#SBATCH --mem=" in script
    command = script.strip().splitlines()[-1]
    # jobqueue's own --memory-limit comes first; the last one wins in dask worker's CLI
    assert command.rsplit("--memory-limit", 1)[1].split()[0] == "1800000000"


def test_jobqueue_script_exports_the_worker_environment_after_the_sites_prologue():
    from dask_jobqueue import SLURMCluster

    with dask.config.set({"jobqueue.slurm.job-script-prologue": ["module load cuda"]}):
        kwargs = jobqueue_kwargs(ClusterSpec(kind="slurm", cores=1, memory="2GB", dashboard_address=None))
    assert kwargs["job_script_prologue"] == ["module load cuda", f"export MALLOC_MMAP_THRESHOLD_={24 * MIB}"]
    with SLURMCluster(**kwargs) as cluster:
        script = cluster.job_script()
    assert (
        script.index("module load cuda")
        < script.index("export MALLOC_MMAP_THRESHOLD_")
        < script.index("distributed.cli.dask_worker")
    )


@pytest.mark.parametrize(
    ("kind", "directive"), [("slurm", "--gres=gpu:2"), ("pbs", "-l ngpus=2"), ("lsf", '-gpu "num=2"')]
)
def test_jobqueue_gpus(kind, directive):
    kwargs = jobqueue_kwargs(ClusterSpec(kind=kind, cores=2, memory="8GB", gpus_per_job=2, processes=2))
    assert kwargs["job_extra_directives"] == [directive]
    args = kwargs["worker_extra_args"]
    assert args[args.index("--resources") + 1] == "GPU=1"


def test_jobqueue_site_gpu_directive_wins():
    spec = ClusterSpec(kind="sge", cores=1, memory="8GB", gpus_per_job=1, job_extra_directives=["-l gpu=1"])
    assert jobqueue_kwargs(spec)["job_extra_directives"] == ["-l gpu=1"]
    with pytest.raises(ConfigError, match=r"gpus_per_job.*does not know how sge requests GPUs"):
        jobqueue_kwargs(ClusterSpec(kind="sge", cores=1, memory="8GB", gpus_per_job=1))


def test_jobqueue_needs_memory_and_cores():
    import dask

    with dask.config.set({"jobqueue.pbs.memory": None, "jobqueue.pbs.cores": None}):
        with pytest.raises(
            ConfigError, match=r"cluster.memory \(--memory\): no memory per pbs job.*--memory"
        ):
            jobqueue_kwargs(ClusterSpec(kind="pbs", cores=1))
        with pytest.raises(ConfigError, match=r"no cores per pbs job"):
            jobqueue_kwargs(ClusterSpec(kind="pbs", memory="1GB"))
    with dask.config.set({"jobqueue.pbs.memory": "4GB", "jobqueue.pbs.cores": 2}):
        kwargs = jobqueue_kwargs(ClusterSpec(kind="pbs"))  # falls back to dask-jobqueue's config
        assert "cores" not in kwargs and kwargs["memory"] == "4000000000B"


# --- bad specs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (
            {"kind": "kubernetes"},
            r"cluster.kind \(--cluster\): unknown cluster kind 'kubernetes'.*tcp://HOST:PORT",
        ),
        ({"kind": "tcp://10.0.0.5"}, r"'tcp://10.0.0.5' has no port.*tcp://HOST:PORT"),
        ({"kind": "tcp://:8786"}, r"is not HOST:PORT"),
        ({"kind": "foo://host:1"}, r"unknown protocol 'foo'"),
        ({"jobs": 0}, r"cluster.jobs \(--jobs\): 0 is not an integer ≥ 1"),
        ({"jobs": 1.5}, r"1.5 is not an integer ≥ 1"),
        ({"cores": "many"}, r"cluster.cores \(--cores\): 'many' is not an integer"),
        ({"gpus_per_job": -1}, r"-1 is not an integer ≥ 0"),
        ({"memory": "lots"}, r"cluster.memory \(--memory\): 'lots' is not an amount of memory.*16GiB"),
        ({"memory": 0}, r"0 is not an amount of memory"),
        ({"memory_fraction": 1.5}, r"memory_fraction: 1.5 is not a fraction"),
        ({"gpus_per_job": 3, "processes": 2}, r"3 GPUs cannot be shared evenly by 2 worker processes"),
    ],
)
def test_bad_specs(fields, match):
    with pytest.raises(ConfigError, match=match):
        ClusterSpec(**fields)


def test_unreachable_scheduler():
    spec = ClusterSpec(kind="tcp://127.0.0.1:9", timeout=1)
    with pytest.raises(ConfigError, match=r"no dask scheduler answers at tcp://127.0.0.1:9 within 1 s"):
        with connect(spec, echo=None):
            pass


def test_unknown_config_key():
    with config.set({"cluster.nodes": 3}):
        with pytest.raises(ConfigError, match=r"cluster.nodes: unknown key"):
            ClusterSpec.from_config()


# --- config and command line ------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_cluster_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_come_from_config():
    assert spec_from_args(_parse([])) == ClusterSpec()
    with config.set({"cluster.kind": "SLURM", "cluster.jobs": 4, "cluster.memory": "8GiB"}):
        spec = spec_from_args(_parse([]))
    assert (spec.kind, spec.jobs, spec.memory) == ("slurm", 4, 8 * 2**30)


def test_flags_override_config():
    argv = ["--cluster", "pbs", "--jobs", "3", "--cores", "8", "--memory", "32GB", "--gpus-per-job", "1"]
    with config.set({"cluster.kind": "slurm", "cluster.jobs": 4, "cluster.walltime": "02:00:00"}):
        spec = spec_from_args(_parse(argv))
    assert spec == ClusterSpec(
        kind="pbs", jobs=3, cores=8, memory=32_000_000_000, gpus_per_job=1, walltime="02:00:00"
    )
    assert spec_from_args(_parse(["--cluster", "tcp://node7:8786"])).kind == "tcp://node7:8786"


def test_environment_variable_override(monkeypatch):
    monkeypatch.setenv("OPERANDO_CLUSTER__JOBS", "5")
    monkeypatch.setenv("OPERANDO_CLUSTER__KIND", "tcp://host:8786")
    cfg = type(config)("operando", defaults=[{"cluster": dict(config.get("cluster"))}])
    spec = ClusterSpec.from_config(cfg)
    assert (spec.kind, spec.jobs) == ("tcp://host:8786", 5)


def test_one_directive_from_a_variable(monkeypatch):
    monkeypatch.setenv("OPERANDO_CLUSTER__JOB_EXTRA_DIRECTIVES", "--constraint=a100")
    cfg = type(config)("operando", defaults=[{"cluster": dict(config.get("cluster"))}])
    assert ClusterSpec.from_config(cfg).job_extra_directives == ("--constraint=a100",)


def test_flag_errors_name_the_flag():
    with pytest.raises(ConfigError, match=r"--jobs"):
        spec_from_args(_parse(["--jobs", "0"]))
    with pytest.raises(ConfigError, match=r"--cluster"):
        spec_from_args(_parse(["--cluster", "torque?"]))


# --- real SLURM -------------------------------------------------------------------------


def _slurm_idle() -> str | None:
    """None when a SLURM node is idle, else why the SLURM test cannot run."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM not set up (no sinfo/sbatch): run .ci/slurm-setup.sh as root"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.split()
    except subprocess.TimeoutExpired:
        return "SLURM not set up (sinfo hangs): run .ci/slurm-setup.sh as root"
    if "idle" not in states and "mix" not in states:
        return f"SLURM not set up (no idle node; sinfo: {states}): run .ci/slurm-setup.sh as root"
    return None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_slurm_cluster_runs_real_work(tmp_path):
    reason = _slurm_idle()
    if reason:
        pytest.skip(reason)
    import zarr

    logs = tmp_path / "logs"
    spec = ClusterSpec(
        kind="slurm",
        jobs=2,
        cores=1,
        processes=1,
        memory="2GB",
        walltime="00:10:00",
        interface="lo",
        log_directory=str(logs),
        dashboard_address=None,
    )
    lines: list[str] = []
    with connect(spec, echo=lines.append) as client:
        client.wait_for_workers(2, timeout=90)
        workers = client.scheduler_info()["workers"].values()
        assert {w["memory_limit"] for w in workers} == {1_800_000_000}  # below the job's 2 GB
        job_ids = set(client.run(lambda: __import__("os").environ.get("SLURM_JOB_ID")).values())
        assert None not in job_ids and len(job_ids) == 2
        queued = subprocess.run(
            ["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True
        ).stdout
        running = {line.split()[0] for line in queued.splitlines() if line.endswith("RUNNING")}
        assert job_ids <= running

        # real work: a zarr round trip written and read by the SLURM workers
        rng = np.random.default_rng(0)
        data = rng.random((64, 64, 64), dtype="float32")
        path = str(tmp_path / "a.zarr")
        da.from_array(data, chunks=16).to_zarr(path, compute=False).compute()  # written remotely
        back = da.from_zarr(path)
        total = client.compute(back.sum(dtype="float64")).result()
        np.testing.assert_allclose(total, data.sum(dtype="float64"), rtol=1e-12)
        np.testing.assert_array_equal(zarr.open_array(path, mode="r")[:], data)
    assert lines[0].startswith("operando: slurm cluster: 2 jobs × 1 cores")
    # the jobs end with the cluster
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
        if not job_ids & set(left):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"SLURM jobs {job_ids} still queued after the cluster closed")


# --- the HPC templates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "directive"),
    [
        ("slurm", "#SBATCH --mem=60G"),
        ("slurm-gpu", "#SBATCH --gres=gpu:1"),
        ("pbs", "#PBS -l select=1:ncpus=8:mem=60GB"),
        ("pbs-gpu", "#PBS -l select=1:ncpus=8:ngpus=1:mem=64GB"),
    ],
)
def test_jobqueue_template(section, directive):
    import dask
    import dask_jobqueue
    import yaml

    template = yaml.safe_load((REPO / "scripts" / "hpc" / "jobqueue.yaml").read_text())
    cls = dask_jobqueue.PBSCluster if section.startswith("pbs") else dask_jobqueue.SLURMCluster
    with dask.config.set(dask.config.merge(dask.config.config, template)):
        with cls(config_name=section, scheduler_options={"dashboard_address": None}) as cluster:
            script = cluster.job_script()
    assert directive in script.splitlines()
    command = script.strip().splitlines()[-1]
    assert command.rsplit("--memory-limit", 1)[1].split()[0] == "57.6GB"
    assert ("--resources GPU=1" in command) == section.endswith("gpu")


def test_sbatch_script_is_valid_bash():
    script = REPO / "scripts" / "hpc" / "operando.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --time=" in text and "--cluster slurm" in text
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage: sbatch" in usage.stderr
