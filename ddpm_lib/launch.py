"""Launch ``torchrun`` from a notebook cell (or any Python code) and watch it live.

    from ddpm_lib.launch import launch
    run_dir = launch("ddpm_lib.train", ["--config", "digits"], nproc=2)
    launch("ddpm_lib.sample", ["--run-dir", str(run_dir)], nproc=2)

Why a subprocess and not ``mp.spawn`` or forking the kernel: a Jupyter kernel that has
touched CUDA cannot fork a working CUDA child, and a crash in a rank should not take
the kernel with it. So we run ``python -m torch.distributed.run`` with this kernel's
own interpreter, stream its output line by line into the cell (papermill captures it
too), and turn a non-zero exit into an exception that carries the last lines of
output. Interrupting the kernel (the stop button) kills torchrun and all its ranks.

The ranks do not outlive the process that called ``launch()`` either, when it dies
without a chance to clean up (a kernel restart or kill, a papermill timeout, even
SIGKILL). On Linux this is guaranteed for any module: torchrun starts with a
parent-death signal, so Linux sends it SIGTERM, and torchrun passes SIGTERM on to
its ranks (SIGKILL after its 30 s shutdown timeout); training ranks stop as on
preemption, normally with a snapshot. On other POSIX systems (macOS), ranks of
``ddpm_lib`` programs stop themselves within about a second (the watchdog started by
:func:`ddpm_lib.dist.setup`), after which torchrun exits too; the ranks of other
modules, and torchrun with them, may keep running there.
"""

from __future__ import annotations

import numbers
import os
import re
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

import torch

from .dist import LAUNCHER_PID_ENV
from .errors import DDPMError

DEFAULT_RDZV_PORT = 29400  # torchrun's port when rdzv_endpoint names only a host
RUN_DIR_FLAGS = ("--run-dir", "--run")  # argparse aliases: the last one given wins
FLAG_EXAMPLES = {"--run-dir": "runs/my_run", "--run": "runs/my_run", "--config": "digits"}


class LaunchError(RuntimeError):
    """torchrun exited with a non-zero status; ``.tail`` holds its last lines of output."""

    def __init__(self, returncode: int, tail: list[str], command: list[str], errors: list[str] = ()):
        self.returncode, self.tail, self.command, self.errors = returncode, tail, command, list(errors)
        reported = "".join(self.errors[:5]) if self.errors else ""
        super().__init__(f"torchrun exited with status {returncode}\n{reported}last lines of output:\n" + "".join(tail))


def default_nproc() -> int:
    """One rank per GPU, or 2 CPU ranks without GPUs."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def torchrun_command(module: str, args: list[str], nproc: int, max_restarts: int = 0, nnodes: int = 1,
                     node_rank: int = 0, rdzv_endpoint: str | None = None, python: str = sys.executable) -> list[str]:
    """The ``python -m torch.distributed.run ...`` command line."""
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")  # a local rendezvous on a free port
    else:
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}", "--rdzv-id=ddpm"]
    return cmd + ["-m", module, *args]


def flag_value(args: list[str], flags: tuple[str, ...]) -> str | None:
    """The value of the last of ``flags`` in ``args`` (``--flag VALUE`` or ``--flag=VALUE``), None if absent.

    Raises a one-line ``DDPMError`` when the flag ends the command line or is followed by
    another option instead of its value, as argparse in the ranks would refuse it.
    """
    value = None
    for i, arg in enumerate(args):
        if arg in flags:
            if i + 1 == len(args) or args[i + 1].startswith("--"):
                raise DDPMError(f"{arg} has no value after it in args; follow it with one, "
                                f"e.g. [..., {arg!r}, {FLAG_EXAMPLES.get(arg, 'VALUE')!r}]")
            value = args[i + 1]
        elif arg.startswith(tuple(f"{flag}=" for flag in flags)):
            value = arg.split("=", 1)[1]
    return value


def run_dir_of(module: str, args: list[str]) -> Path | None:
    """The run directory a train/sample/evaluate command line writes to."""
    run_dir = flag_value(args, RUN_DIR_FLAGS)
    if run_dir is not None:
        return Path(run_dir)
    if module.endswith("train"):
        from .config import load_config

        return Path("runs") / load_config(flag_value(args, ("--config",)) or "digits").name
    return None


def whole_number(name: str, value, minimum: int, alternative: str = "") -> int:
    """``value`` (an int, or a string holding one) as an int of at least ``minimum``; else a one-line
    DDPMError (which offers ``alternative``, another accepted value, when given)."""
    number = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        number = int(value)
    if number is None or number < minimum:
        accepted = f"{alternative!r} or a whole number" if alternative else "a whole number"
        raise DDPMError(f"{name} must be {accepted} >= {minimum}, got {value!r}; e.g. {name}={minimum}")
    return number


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of a ``HOST[:PORT]`` rendezvous endpoint, read as torchrun reads it (port 29400 if none).

    A bracketed IPv6 address may stand alone or take a port: ``[::1]`` or ``[::1]:29400``.
    """
    text = endpoint.strip() if isinstance(endpoint, str) else ""
    host, colon, port = text.rpartition(":")
    if not colon or text.endswith("]"):  # no port: a host name, an IPv4 or a bracketed IPv6 address
        host, port = text, str(DEFAULT_RDZV_PORT)
    bare_host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not re.fullmatch(r"[\w.:-]+", bare_host) or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 2**16:
        raise DDPMError(f"rdzv_endpoint must be HOST:PORT with a port in 1-65535 (the address of node 0), got "
                        f"{endpoint!r}; e.g. rdzv_endpoint='node0:29400'")
    return host, int(port)


def checked_nproc(nproc: int | str, args: list[str]) -> int:
    """The number of ranks per node that ``nproc`` asks for ("auto": :func:`default_nproc`), checked
    against this machine's GPUs unless the ranks train on the CPU."""
    n = default_nproc() if nproc == "auto" else whole_number("nproc", nproc, 1, alternative="auto")
    if torch.cuda.is_available() and n > torch.cuda.device_count() and "train.device=cpu" not in args:
        raise DDPMError(f"nproc={n} but this machine has {torch.cuda.device_count()} GPU(s); "
                        f"use nproc<={torch.cuda.device_count()} or pass --set train.device=cpu")
    return n


def checked_nodes(nnodes: int, node_rank: int, rdzv_endpoint: str | None) -> tuple[int, int]:
    """(nnodes, node_rank) as ints, after one-line DDPMErrors for a node count, node rank or
    rendezvous endpoint that torchrun would refuse or misuse, or a rendezvous port that is taken."""
    nnodes, node_rank = whole_number("nnodes", nnodes, 1), whole_number("node_rank", node_rank, 0)
    if node_rank >= nnodes:
        raise DDPMError(f"node_rank={node_rank} is out of range for nnodes={nnodes}; "
                        f"number the nodes 0 to {nnodes - 1} (node 0 hosts the rendezvous)")
    if rdzv_endpoint is None:
        if nnodes > 1:
            raise DDPMError(f"nnodes={nnodes} needs rdzv_endpoint='HOST:PORT', the address of node 0, "
                            f"the same on every node")
        return nnodes, node_rank
    host, port = parse_endpoint(rdzv_endpoint)
    here = host in ("127.0.0.1", "localhost", "0.0.0.0", socket.gethostname())
    if node_rank == 0 and here and port_in_use(host, port):
        raise DDPMError(f"rendezvous port {port} on {host} is already in use; pick another port in rdzv_endpoint")
    return nnodes, node_rank


def launch(module: str = "ddpm_lib.train", args: list[str] | tuple[str, ...] = (), nproc: int | str = "auto",
           max_restarts: int = 0, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None,
           env: dict | None = None, cwd: str | Path | None = None, tail: int = 40, echo: bool = True) -> Path | None:
    """Run ``torchrun ... -m module args`` to completion, streaming its output; return the run directory.

    ``nproc="auto"`` is one rank per GPU, or 2 CPU ranks without GPUs. Raises
    :class:`LaunchError` (with the last ``tail`` lines) when torchrun fails, and a
    one-line ``DDPMError`` before starting for arguments torchrun would refuse (a bad
    nproc, max_restarts, nnodes, node_rank or rdzv_endpoint, a ``--run-dir``/``--config``
    without its value) and when the rendezvous port is taken. torchrun and its ranks
    end with the calling process (see the module docstring).
    """
    args = [str(a) for a in args]
    n = checked_nproc(nproc, args)
    max_restarts = whole_number("max_restarts", max_restarts, 0)
    tail = whole_number("tail", tail, 0)
    nnodes, node_rank = checked_nodes(nnodes, node_rank, rdzv_endpoint)
    for flags in (RUN_DIR_FLAGS, ("--config",)):
        flag_value(args, flags)  # a flag without its value: refused here rather than by every rank
    command = torchrun_command(module, args, n, max_restarts, nnodes, node_rank, rdzv_endpoint)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", LAUNCHER_PID_ENV: str(os.getpid()), **(env or {})}
    last = deque(maxlen=tail)
    errors = []  # our programs' one-line "error: ..." messages, which torchrun's report can push out of the tail
    proc = subprocess.Popen(with_parent_death_signal(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env=child_env, cwd=cwd, start_new_session=True)
    try:
        for line in proc.stdout:
            last.append(line)
            if line.startswith("error: ") and line not in errors:
                errors.append(line)
            if echo:
                print(line, end="", flush=True)
        returncode = proc.wait()
    except BaseException:  # KeyboardInterrupt from the kernel's stop button, or anything else
        _kill_group(proc)
        raise
    if returncode != 0:
        raise LaunchError(returncode, list(last), command, errors)
    run_dir = run_dir_of(module, args)
    return Path(cwd or ".") / run_dir if run_dir is not None and not run_dir.is_absolute() else run_dir


# Run by the new interpreter before it turns into torchrun (execv keeps the setting): ask
# Linux for SIGTERM when its parent dies, and end at once if that parent is already gone.
_PARENT_DEATH_BOOTSTRAP = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def with_parent_death_signal(command: list[str]) -> list[str]:
    """On Linux, ``command`` (a Python command line) made to receive SIGTERM when this process dies.

    Linux sends the signal when the *thread* that started the command exits, not the
    whole process; :func:`launch` blocks its thread until torchrun has ended, so the two
    coincide. A small bootstrap sets it (``prctl(PR_SET_PDEATHSIG)``) and then becomes
    ``command``: no ``preexec_fn``, which is unsafe in a process with threads such as a
    Jupyter kernel. Elsewhere ``command`` is returned unchanged.
    """
    if not sys.platform.startswith("linux"):
        return command
    return [command[0], "-c", _PARENT_DEATH_BOOTSTRAP, str(os.getpid()), *command]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun's whole process group (it forwards to the ranks), then SIGKILL stragglers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
