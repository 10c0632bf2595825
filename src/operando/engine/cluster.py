"""Where dask runs: one way to get a :class:`distributed.Client`.

Three kinds of cluster, chosen by ``cluster.kind`` (config / ``OPERANDO_CLUSTER__KIND``)
or ``--cluster`` on every heavy verb:

``local`` (the default)
    A :class:`~distributed.LocalCluster` of worker *processes* on this machine.
    Unset sizes are taken from the machine: one worker per 2 cores with 2 threads
    each, and ``memory_fraction`` of the RAM (cgroup limit included) shared among
    the workers. Here ``jobs`` is the number of worker processes, ``cores`` the
    threads of each, and ``memory`` each worker's memory limit.
``tcp://HOST:PORT`` (or another dask protocol)
    An existing scheduler, started by ``dask scheduler`` or another operando run.
``slurm``, ``pbs``, ``sge``, ``lsf``, ``htcondor``, ``moab``, ``oar``
    A dask-jobqueue cluster: the scheduler runs in this process (e.g. inside an
    ``sbatch`` job, see ``scripts/hpc/operando.sbatch``) and the workers are
    ``jobs`` further batch jobs, each with ``cores`` cores, ``memory`` of memory and
    ``processes`` worker processes. Unset values fall back to dask-jobqueue's own
    configuration (``~/.config/dask/jobqueue.yaml``, template in
    ``scripts/hpc/jobqueue.yaml``). Each worker's dask memory limit is
    ``memory_fraction`` × memory / processes, below the job's memory, so that dask
    spills, pauses and restarts workers before the batch system's OOM killer ends
    the job. ``gpus_per_job`` asks the batch system for GPUs (``--gres=gpu:N`` on
    SLURM, ``-l ngpus=N`` on PBS, ``-gpu num=N`` on LSF) and gives each worker the
    resource ``GPU`` (tasks annotated ``resources={"GPU": 1}`` run only there).

Keys (``cluster.*``)
--------------------
kind : str
    ``local``, a scheduler address, or a dask-jobqueue cluster name.
jobs : int or None
    Worker processes (local) or batch jobs (job queues); None: sized to the machine / 1.
cores : int or None
    Threads per worker (local) or cores per job (job queues).
memory : str or None
    Memory limit per worker (local) or memory per job (job queues), e.g. ``"16GiB"``.
processes : int
    Worker processes per batch job.
gpus_per_job : int
    GPUs per batch job (local: the ``GPU`` resource of each worker).
walltime, queue, account, interface, log_directory, local_directory : str or None
    Passed to dask-jobqueue (``interface`` and ``local_directory`` also to local workers).
job_extra_directives : list of str
    Extra batch directives (e.g. ``["--constraint=a100"]``).
memory_fraction : float
    Share of the job's memory (local: of the machine's) that dask may use.
dashboard_address : str or None
    Where the scheduler serves its dashboard (``:0``: any free port; None: none).
timeout : float
    Seconds to wait for an existing scheduler to answer.

Use::

    spec = spec_from_args(args)          # or ClusterSpec.from_config()
    with connect(spec) as client:
        result = array.sum().compute()
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dask
import psutil
from dask.utils import format_bytes, parse_bytes

from operando.config import config
from operando.errors import ConfigError

__all__ = [
    "JOBQUEUE_KINDS",
    "ClusterSpec",
    "add_cluster_arguments",
    "compute_on",
    "connect",
    "local_sizing",
    "spec_from_args",
]

JOBQUEUE_KINDS = ("slurm", "pbs", "sge", "lsf", "htcondor", "moab", "oar")
"""dask-jobqueue clusters by name (``slurm`` is ``dask_jobqueue.SLURMCluster``)."""

_ADDRESS_PROTOCOLS = ("tcp", "tls", "ws", "wss", "ucx", "inproc")
_GPU_DIRECTIVES: dict[str, Callable[[int], str]] = {
    "slurm": lambda n: f"--gres=gpu:{n}",
    "pbs": lambda n: f"-l ngpus={n}",
    "lsf": lambda n: f'-gpu "num={n}"',
}
_KIND_WHERE = "cluster.kind (--cluster)"


@dataclass(frozen=True)
class ClusterSpec:
    """What cluster to run on; see the module docstring for each field.

    Built from the config (:meth:`from_config`) and the command line
    (:func:`spec_from_args`); validated and normalised on construction (``memory``
    becomes bytes, ``kind`` lower case), raising :class:`~operando.errors.ConfigError`.
    """

    kind: str = "local"
    jobs: int | None = None
    cores: int | None = None
    memory: int | None = None
    processes: int = 1
    gpus_per_job: int = 0
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    interface: str | None = None
    log_directory: str | None = None
    local_directory: str | None = None
    job_extra_directives: tuple[str, ...] = ()
    memory_fraction: float = 0.9
    dashboard_address: str | None = ":8787"
    timeout: float = 30.0

    def __post_init__(self) -> None:
        kind = str(self.kind).strip()
        if "://" not in kind:
            kind = kind.lower().removesuffix("cluster")
        if kind not in ("local", *JOBQUEUE_KINDS) and "://" not in kind:
            raise ConfigError(
                _KIND_WHERE,
                f"unknown cluster kind {self.kind!r}",
                remedy="Use local, a scheduler address tcp://HOST:PORT, or a job queue: "
                + ", ".join(JOBQUEUE_KINDS)
                + ".",
            )
        if "://" in kind:
            _check_address(kind)
        set_ = _setter(self)
        set_("kind", kind)
        set_("jobs", _positive_int("cluster.jobs (--jobs)", self.jobs))
        set_("cores", _positive_int("cluster.cores (--cores)", self.cores))
        set_("processes", _positive_int("cluster.processes", self.processes))
        set_("gpus_per_job", _positive_int("cluster.gpus_per_job (--gpus-per-job)", self.gpus_per_job, 0))
        set_("memory", _parse_memory("cluster.memory (--memory)", self.memory))
        directives = self.job_extra_directives or ()
        if isinstance(directives, str):  # one directive from an OPERANDO_CLUSTER__* variable
            directives = (directives,)
        set_("job_extra_directives", tuple(str(d) for d in directives))
        try:
            fraction = float(self.memory_fraction)
        except (TypeError, ValueError):
            fraction = -1.0
        if not 0 < fraction <= 1:
            raise ConfigError(
                "cluster.memory_fraction",
                f"{self.memory_fraction!r} is not a fraction in (0, 1]",
                remedy="Use e.g. 0.9: dask may use 90% of each job's memory.",
            )
        set_("memory_fraction", fraction)
        if self.processes > 1 and self.gpus_per_job % self.processes:
            raise ConfigError(
                "cluster.gpus_per_job (--gpus-per-job)",
                f"{self.gpus_per_job} GPUs cannot be shared evenly by {self.processes} worker processes",
                remedy="Make gpus_per_job a multiple of cluster.processes (one worker per GPU: equal).",
            )

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def is_address(self) -> bool:
        return "://" in self.kind

    @property
    def is_jobqueue(self) -> bool:
        return self.kind in JOBQUEUE_KINDS

    @classmethod
    def from_config(cls, cfg: Any = config, **overrides: Any) -> ClusterSpec:
        """The spec the ``cluster.*`` config keys describe; ``overrides`` that are not None win."""
        values = dict(cfg.get("cluster", default={}) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"cluster.{unknown[0]}",
                f"unknown key (cluster keys: {', '.join(sorted(names))})",
                remedy="Remove it or fix its spelling in the config file or OPERANDO_CLUSTER__* variable.",
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def worker_memory_limit(self) -> int | None:
        """Each dask worker's memory limit in bytes (None: left to dask-jobqueue's config)."""
        if self.is_local:
            return self.memory if self.memory is not None else local_sizing(self)[2]
        memory = self.memory if self.memory is not None else _jobqueue_default_memory(self.kind)
        if memory is None:
            return None
        return int(self.memory_fraction * memory / self.processes)

    def describe(self) -> str:
        """One line saying what this spec brings up."""
        if self.is_address:
            return f"scheduler at {self.kind}"
        if self.is_local:
            n, threads, limit = local_sizing(self)
            gpu = f", GPU={self.gpus_per_job} each" if self.gpus_per_job else ""
            return f"local cluster: {n} worker processes × {threads} threads, {format_bytes(limit)} each{gpu}"
        limit = self.worker_memory_limit()
        return (
            f"{self.kind} cluster: {self.jobs or 1} jobs × {self.cores or 'default'} cores, "
            f"{format_bytes(self.memory) if self.memory else 'default memory'} per job, "
            f"{self.processes} worker process(es) per job with "
            f"{format_bytes(limit) if limit else 'default'} memory limit each"
            + (f", {self.gpus_per_job} GPU(s) per job" if self.gpus_per_job else "")
        )


def _setter(obj: object) -> Callable[[str, Any], None]:
    """Setter for a frozen dataclass's fields during ``__post_init__``."""
    return lambda name, value: object.__setattr__(obj, name, value)


def compute_on(client: Any | None, *collections: Any) -> tuple:
    """``dask.compute(*collections)``, on ``client``'s cluster when one is given."""
    if client is None:
        import dask

        return dask.compute(*collections)
    return tuple(client.compute(list(collections), sync=True))


def local_sizing(spec: ClusterSpec | None = None) -> tuple[int, int, int]:
    """(worker processes, threads per worker, memory limit per worker in bytes) for a local cluster.

    Unset values come from the machine: one worker per 2 usable cores with 2
    threads each, and ``memory_fraction`` of the usable memory (the smaller of RAM
    and a cgroup limit) shared evenly among the workers.
    """
    spec = spec or ClusterSpec()
    cores = _usable_cores()
    n_workers = spec.jobs or max(1, cores // 2)
    threads = spec.cores or max(1, cores // n_workers)
    memory = spec.memory or int(spec.memory_fraction * _usable_memory() / n_workers)
    return n_workers, threads, memory


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags every heavy verb shares: ``--cluster --jobs --cores --memory --gpus-per-job``.

    Unset flags default to None, so that :func:`spec_from_args` keeps the config's values.
    """
    group = parser.add_argument_group(
        "cluster", "where dask runs (defaults: cluster.* config keys, OPERANDO_CLUSTER__* variables)"
    )
    group.add_argument(
        "--cluster",
        metavar="KIND",
        help="local (default; worker processes on this machine), tcp://HOST:PORT (an existing "
        "scheduler), or a job queue: " + ", ".join(JOBQUEUE_KINDS),
    )
    group.add_argument(
        "--jobs", type=int, metavar="N", help="worker processes (local) or batch jobs (job queues)"
    )
    group.add_argument(
        "--cores", type=int, metavar="N", help="threads per worker (local) or cores per batch job"
    )
    group.add_argument(
        "--memory", metavar="SIZE", help="memory per worker (local) or per batch job, e.g. 16GiB"
    )
    group.add_argument(
        "--gpus-per-job", type=int, metavar="N", help="GPUs per batch job; workers get the resource GPU"
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every verb that runs on a dask cluster: the cluster flags and ``--quiet``."""
    add_cluster_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, cluster lines or final report")


@contextlib.contextmanager
def client_from_args(args: argparse.Namespace) -> Iterator[Any]:
    """The client of the cluster :func:`add_run_arguments`'s flags describe; its lines go to stderr."""
    echo = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    with connect(spec_from_args(args), echo=echo) as client:
        yield client


def spec_from_args(args: argparse.Namespace, cfg: Any = config) -> ClusterSpec:
    """The cluster spec from :func:`add_cluster_arguments`'s flags over the config."""
    return ClusterSpec.from_config(
        cfg,
        kind=getattr(args, "cluster", None),
        jobs=getattr(args, "jobs", None),
        cores=getattr(args, "cores", None),
        memory=getattr(args, "memory", None),
        gpus_per_job=getattr(args, "gpus_per_job", None),
    )


@contextlib.contextmanager
def connect(spec: ClusterSpec | None = None, *, echo: Callable[[str], None] | None = print) -> Iterator[Any]:
    """Bring up (or reach) the cluster ``spec`` describes and yield a connected ``distributed.Client``.

    The cluster is closed on exit (an existing scheduler is left running). ``echo``
    receives one line describing the cluster and one with the dashboard link (None:
    silent). Job-queue workers arrive as the batch system starts their jobs; call
    ``client.wait_for_workers(n)`` to wait for them.
    """
    from distributed import Client

    spec = spec or ClusterSpec.from_config()
    say = echo or (lambda _line: None)
    with contextlib.ExitStack() as stack:
        if spec.is_address:
            try:
                client = stack.enter_context(Client(spec.kind, timeout=spec.timeout))
            except (OSError, TimeoutError) as err:
                raise ConfigError(
                    _KIND_WHERE,
                    f"no dask scheduler answers at {spec.kind} within {spec.timeout:g} s ({err})",
                    remedy="Start one (dask scheduler) or check the host, port and firewall.",
                ) from err
        else:
            cluster = stack.enter_context(_local(spec) if spec.is_local else _jobqueue(spec))
            if spec.is_jobqueue:
                cluster.scale(jobs=spec.jobs or 1)
            client = stack.enter_context(Client(cluster))
        say(f"operando: {spec.describe()}")
        link = _dashboard_link(client)
        say(f"operando: dask dashboard at {link}" if link else "operando: no dask dashboard (needs bokeh)")
        yield client


#: Environment of every worker process operando starts. distributed sets
#: ``MALLOC_TRIM_THRESHOLD_``, which also fixes glibc's mmap threshold at 128 KiB:
#: every torch activation is then a fresh mmap, page-faulted in on each forward.
#: Measured: a small 2D U-Net's forward pass was 2.4x slower in a worker than in
#: this process. Allocations below 24 MiB (activations of 8 patches of 128² are
#: up to 16 MiB) now come from the heap; data chunks (~32 MiB) are still mapped
#: and returned to the system when freed, as distributed intends.
WORKER_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": 24 * 2**20}


def worker_environ() -> dict[str, Any]:
    """distributed's pre-spawn environment of worker processes, with :data:`WORKER_ENVIRON` added.

    A value the user set in ``distributed.nanny.pre-spawn-environ`` wins.
    """
    current = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    return WORKER_ENVIRON | current


def local_cluster(**kwargs: Any) -> Any:
    """A :class:`distributed.LocalCluster` of worker processes (keywords as its own) with :func:`worker_environ`."""
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        return LocalCluster(processes=True, **kwargs)


def _local(spec: ClusterSpec) -> Any:
    n_workers, threads, memory_limit = local_sizing(spec)
    kwargs: dict[str, Any] = {}
    if spec.gpus_per_job:
        kwargs["resources"] = {"GPU": spec.gpus_per_job}
    if spec.interface:
        kwargs["interface"] = spec.interface
    if spec.local_directory:
        kwargs["local_directory"] = spec.local_directory
    return local_cluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        memory_limit=memory_limit,
        dashboard_address=spec.dashboard_address,
        **kwargs,
    )


def jobqueue_kwargs(spec: ClusterSpec) -> dict[str, Any]:
    """The keyword arguments :func:`connect` gives the dask-jobqueue cluster class for ``spec``."""
    kwargs: dict[str, Any] = {"processes": spec.processes}
    for name in ("cores", "walltime", "queue", "account", "interface", "log_directory", "local_directory"):
        value = getattr(spec, name)
        if value is not None:
            kwargs[name] = value
    memory = spec.memory if spec.memory is not None else _jobqueue_default_memory(spec.kind)
    if memory is None:
        raise ConfigError(
            "cluster.memory (--memory)",
            f"no memory per {spec.kind} job is set",
            remedy=f"Pass --memory (e.g. 16GiB), set cluster.memory, or jobqueue.{spec.kind}.memory "
            "in ~/.config/dask/jobqueue.yaml.",
        )
    if (spec.cores or dask.config.get(f"jobqueue.{spec.kind}.cores", default=None)) is None:
        raise ConfigError(
            "cluster.cores (--cores)",
            f"no cores per {spec.kind} job are set",
            remedy=f"Pass --cores, set cluster.cores, or jobqueue.{spec.kind}.cores in ~/.config/dask/jobqueue.yaml.",
        )
    kwargs["memory"] = f"{memory}B"
    worker_args = ["--memory-limit", str(spec.worker_memory_limit())]  # overrides jobqueue's own
    directives = list(spec.job_extra_directives)
    if spec.gpus_per_job:
        worker_args += ["--resources", f"GPU={spec.gpus_per_job // spec.processes}"]
        if not directives:
            if spec.kind not in _GPU_DIRECTIVES:
                raise ConfigError(
                    "cluster.gpus_per_job (--gpus-per-job)",
                    f"operando does not know how {spec.kind} requests GPUs",
                    remedy="Set cluster.job_extra_directives to your site's GPU request.",
                )
            directives.append(_GPU_DIRECTIVES[spec.kind](spec.gpus_per_job))
    kwargs["worker_extra_args"] = worker_args
    kwargs["job_script_prologue"] = _job_prologue(spec.kind)
    if directives:
        kwargs["job_extra_directives"] = directives
    if spec.dashboard_address is not None:
        kwargs["scheduler_options"] = {"dashboard_address": spec.dashboard_address}
    return kwargs


def _job_prologue(kind: str) -> list[str]:
    """The site's job-script prologue, then exports of :data:`WORKER_ENVIRON` (the nanny's child inherits them)."""
    site = list(dask.config.get(f"jobqueue.{kind}.job-script-prologue", default=None) or [])
    return site + [f"export {k}={v}" for k, v in WORKER_ENVIRON.items()]


def _jobqueue(spec: ClusterSpec) -> Any:
    import dask_jobqueue

    cls = {c.__name__.removesuffix("Cluster").lower(): c for c in _jobqueue_classes(dask_jobqueue)}[spec.kind]
    return cls(**jobqueue_kwargs(spec))


def _jobqueue_classes(module: Any) -> list[type]:
    return [
        getattr(module, name)
        for name in dir(module)
        if name.endswith("Cluster") and name.removesuffix("Cluster").lower() in JOBQUEUE_KINDS
    ]


def _jobqueue_default_memory(kind: str) -> int | None:
    value = dask.config.get(f"jobqueue.{kind}.memory", default=None)
    return None if value is None else parse_bytes(value)


def _dashboard_link(client: Any) -> str | None:
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # the link is a courtesy; never fail a run for it
        return None
    return client.dashboard_link if "dashboard" in services else None


def _check_address(address: str) -> None:
    from distributed.comm.addressing import parse_address, parse_host_port

    remedy = "Write the scheduler's address as tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786."
    protocol, location = parse_address(address)
    if protocol not in _ADDRESS_PROTOCOLS:
        raise ConfigError(_KIND_WHERE, f"{address!r} has the unknown protocol {protocol!r}", remedy=remedy)
    if protocol == "inproc":
        return
    try:
        host, port = parse_host_port(location)
    except ValueError as err:
        raise ConfigError(_KIND_WHERE, f"{address!r} has no port", remedy=remedy) from err
    if not host or not 0 < int(port) < 65536:
        raise ConfigError(_KIND_WHERE, f"{address!r} is not HOST:PORT", remedy=remedy)


def _positive_int(where: str, value: object, minimum: int = 1) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)  # type: ignore[call-overload]
        ok = number == float(value) and number >= minimum  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(value, bool):
        raise ConfigError(
            where, f"{value!r} is not an integer ≥ {minimum}", remedy=f"Use an integer ≥ {minimum}."
        )
    return number


def _parse_memory(where: str, value: object) -> int | None:
    if value is None:
        return None
    try:
        number = int(value) if isinstance(value, int | float) else parse_bytes(str(value))
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or isinstance(value, bool):
        raise ConfigError(
            where,
            f"{value!r} is not an amount of memory",
            remedy='Write it as bytes or with a unit, e.g. "16GiB", "4000MB" or 2e9.',
        )
    return number


def _usable_cores() -> int:
    try:
        return len(psutil.Process().cpu_affinity() or []) or psutil.cpu_count() or 1
    except (AttributeError, OSError):  # no affinity on macOS
        return psutil.cpu_count() or 1


def _usable_memory() -> int:
    from distributed.system import MEMORY_LIMIT

    return min(psutil.virtual_memory().total, MEMORY_LIMIT or psutil.virtual_memory().total)
