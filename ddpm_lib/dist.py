"""Distributed setup: one process per rank, started by ``torchrun`` (or alone).

``torchrun`` starts ``WORLD_SIZE`` copies of a program and tells each who it is
through environment variables::

    RANK         this process's index among all processes, 0..WORLD_SIZE-1
    LOCAL_RANK   its index on this machine (which GPU it drives)
    WORLD_SIZE   how many processes train together
    MASTER_ADDR, MASTER_PORT   where the rendezvous store listens

Without them we are a single process (world size 1): every collective below is
then a no-op, so the same training code runs under ``python -m`` and ``torchrun``.
Backends: NCCL when every rank has its own CUDA device, gloo on CPU. A second,
gloo "control" group carries tiny CPU messages (e.g. "stop now?") without
synchronising the GPU.

A rank must not outlive its launch. Under torchrun on POSIX systems, :func:`setup`
starts a watchdog thread (:func:`start_orphan_watchdog`): within about a second of
torchrun (the rank's parent) or the process that called ``launch.launch`` being gone,
it sends its own rank SIGTERM, on which training saves a snapshot and stops and other
programs end; a rank still alive ``ORPHAN_GRACE_S`` seconds later exits hard.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import DDPMError


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (world size 1)
    control_group: object = None

    @property
    def is_main(self) -> bool:
        """Rank 0 owns logging, snapshots and the EMA truth."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (0, 0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


LAUNCHER_PID_ENV = "DDPM_LAUNCHER_PID"  # set by launch.launch() to its own pid
ORPHAN_POLL_S = 0.5
ORPHAN_GRACE_S = 30.0  # as long as torchrun itself waits between its SIGTERM and SIGKILL
_watchdog: threading.Thread | None = None


def start_orphan_watchdog() -> None:
    """Under torchrun on POSIX, stop this rank once torchrun or the launching process is gone.

    A daemon thread checks every ``ORPHAN_POLL_S`` seconds whether this process's parent
    (torchrun's agent) has changed or the process named by ``DDPM_LAUNCHER_PID`` (set by
    ``launch.launch``) has exited. Then it sends this process SIGTERM (the training loop
    stops at the next step and saves a snapshot; a program without a handler ends) and
    exits it hard if it is still alive ``ORPHAN_GRACE_S`` seconds later. Once the
    launcher is gone, or stops reading the stdout pipe it gave us, the rank's stdout and
    stderr go to the null device: printing to that pipe would raise while the rank stops
    (on Linux torchrun sends SIGTERM the moment the launcher dies). Started once per
    process; does nothing outside torchrun and on Windows.
    """
    global _watchdog
    if _watchdog is not None or os.name != "posix" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    _watchdog = threading.Thread(target=_stop_when_orphaned, name="ddpm-orphan-watchdog", daemon=True,
                                 args=(os.getppid(), int(launcher) if launcher.isdigit() else None))
    _watchdog.start()


def _stop_when_orphaned(agent: int, launcher: int | None) -> None:
    """Once orphaned, SIGTERM this process; end it hard if it is still alive ``ORPHAN_GRACE_S`` later."""
    _wait_until_orphaned(agent, launcher)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(128 + signal.SIGTERM)  # the status of a process killed by SIGTERM


def _wait_until_orphaned(agent: int, launcher: int | None) -> None:
    """Return once ``launcher`` (if any) has exited or ``agent`` is no longer our parent, silencing
    this process as soon as the launcher is gone or stops reading our output."""
    output = _output_pipe_poller() if launcher is not None else None
    while True:
        if launcher is not None and not _process_exists(launcher):
            _silence_output()
            # A SIGTERM on one rank stops them all at the next step, so first let every rank's
            # watchdog (each polls on its own) notice and silence its rank as well.
            time.sleep(2 * ORPHAN_POLL_S)
            return
        if os.getppid() != agent:
            _tell_stderr(f"[dist] rank {read_env()[0]}: torchrun (pid {agent}) is gone; stopping this rank\n")
            return
        if output is not None and output.poll(ORPHAN_POLL_S * 1000):  # waits, like the sleep below
            _silence_output()  # the launcher is dying, and on Linux torchrun SIGTERMs us right away
            output = None
        elif output is None:
            time.sleep(ORPHAN_POLL_S)


def _tell_stderr(message: str) -> None:
    """Write ``message`` to stderr, unless nobody reads it any more."""
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
    except OSError:
        pass


def _process_exists(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to someone else
        return True
    return True


def _output_pipe_poller() -> select.poll | None:
    """A poll object that wakes when our stdout is a pipe whose reader is gone; None if stdout is no pipe."""
    try:
        if not hasattr(select, "poll") or not stat.S_ISFIFO(os.fstat(1).st_mode):
            return None
    except OSError:  # no stdout at all
        return None
    poller = select.poll()
    poller.register(1, select.POLLERR)  # what a pipe reports once its last reader has closed it
    return poller


def _silence_output() -> None:
    """Point this process's stdout and stderr at the null device."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def busy_cores(seconds: float = 0.1) -> float:
    """How many cores other programs keep busy, measured over ``seconds`` from ``/proc/stat``
    (Linux) with this process's own time left out; 0.0 where that cannot be read (macOS, Windows)."""
    def read() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            jiffies = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()[11:13]  # utime, stime
        return sum(jiffies), jiffies[3] + jiffies[4], sum(int(x) for x in mine)  # total, idle + iowait, ours
    try:
        total0, idle0, mine0 = read()
        time.sleep(seconds)
        total1, idle1, mine1 = read()
    except (OSError, ValueError, IndexError):
        return 0.0
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    others = elapsed - (idle1 - idle0) - (mine1 - mine0)
    return max(0.0, others / elapsed * (os.cpu_count() or 1))


def default_threads(ranks_here: int, busy: float | None = None) -> int:
    """The torch CPU threads a rank gets with ``train.threads=0``.

    Several ranks on one machine share its cores. A single rank takes every core except those
    other programs keep busy (``busy``, measured by :func:`busy_cores` when not given; a core counts
    from 75% use): a learner's laptop also runs a browser and JupyterLab, and a torch thread that
    shares its core with them holds up every parallel operation of the step
    (``scripts/bench.py --only busy``). ``train.threads=N`` fixes the count.
    """
    cores = os.cpu_count() or 1
    if ranks_here > 1:
        return max(1, cores // ranks_here)
    busy = busy_cores() if busy is None else busy
    return max(1, cores - int(busy + 0.25))


def setup(device: str = "auto", threads: int = 0, timeout_minutes: float = 30.0) -> DistEnv:
    """Pick this rank's device and CPU threads and, for world size > 1, join the process group.

    ``device``: ``"auto"`` (a GPU when there is one), ``"cuda"`` or ``"cpu"``.
    ``threads``: torch CPU threads for this rank; 0 shares the machine's cores among the
    ranks on it (torchrun would otherwise leave every rank at ``OMP_NUM_THREADS=1``), and a
    single rank leaves out the cores other programs keep busy (:func:`default_threads`).
    The process group is created on a store prefixed by ``TORCHELASTIC_RESTART_COUNT``:
    after ``torchrun --max-restarts`` brings the workers back, keys left in the agent's
    store by the failed attempt would otherwise make the new group connect to dead peers.
    Under torchrun it also starts :func:`start_orphan_watchdog`.
    """
    start_orphan_watchdog()
    rank, local_rank, world_size = read_env()
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(threads or default_threads(ranks_here))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise DDPMError("device=cuda was asked for but PyTorch sees no CUDA device; use device=cpu")
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise DDPMError(f"local rank {local_rank} has no GPU: this machine has {n_gpus} GPU(s); start at most "
                            f"{n_gpus} processes per node (--nproc_per_node={n_gpus}) or train on CPU ranks")
        torch.cuda.set_device(local_rank)
        env = DistEnv(rank, local_rank, world_size, torch.device("cuda", local_rank), "nccl")
    else:
        env = DistEnv(rank, local_rank, world_size, torch.device("cpu"), "gloo")
    if world_size == 1:
        env.backend = None
        return env
    timeout = timedelta(minutes=timeout_minutes)
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(env.backend, store=dist.PrefixStore(f"ddpm_attempt_{attempt}", store), rank=rank,
                            world_size=world_size, timeout=timeout,
                            device_id=env.device if env.backend == "nccl" else None)
    env.control_group = dist.new_group(backend="gloo") if env.backend != "gloo" else dist.group.WORLD
    return env


def cleanup(env: DistEnv, wait_for_peers: bool = True) -> None:
    """Leave the process group. On a normal exit, first wait until every rank is done:
    tearing down gloo while a peer still talks to it can abort that peer. After an
    error, leave at once (a peer may never arrive)."""
    if env.distributed and dist.is_initialized():
        if wait_for_peers:
            dist.barrier(group=env.control_group)
        dist.destroy_process_group()


@contextmanager
def distributed(device: str = "auto", threads: int = 0):
    """``with distributed() as env:`` set up (see :func:`setup`), run the body, then leave the
    group: after waiting for the peers when the body succeeded, at once when it raised."""
    env = setup(device, threads)
    try:
        yield env
    except BaseException:
        cleanup(env, wait_for_peers=False)
        raise
    cleanup(env)


def exit_worker_if_distributed() -> None:
    """End a torchrun worker right after its work, skipping interpreter finalization.

    With gloo, objects held by its C++ worker threads can be freed during Python's
    shutdown and abort the process ("terminate called without an active exception",
    SIGABRT) even after ``destroy_process_group`` - about one run in ten here, which
    torchrun reports as a failed job (see pytorch/pytorch#179291). Command-line entry
    points call this once their outputs are written and flushed."""
    if read_env()[2] > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def barrier(env: DistEnv) -> None:
    """Wait for every rank (on the CPU control group, so no GPU work is involved)."""
    if env.distributed:
        dist.barrier(group=env.control_group)


def any_rank(env: DistEnv, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (one tiny CPU all-reduce)."""
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control_group)
    return bool(t.item())


def mean_over_ranks(env: DistEnv, value: torch.Tensor) -> torch.Tensor:
    """The average of a tensor over all ranks (on its own device)."""
    if env.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= env.world_size
    return value


def gather_objects(env: DistEnv, obj) -> list:
    """Every rank's ``obj`` (picklable, moved to the CPU first), in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj, group=env.control_group)
    return out


def broadcast_module_(env: DistEnv, module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite ``module``'s parameters and buffers on every rank with rank ``src``'s."""
    if env.distributed:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src)
