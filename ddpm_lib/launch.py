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
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

import torch

from .errors import DDPMError


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


def run_dir_of(module: str, args: list[str]) -> Path | None:
    """The run directory a train/sample/evaluate command line writes to."""
    for flag in ("--run-dir", "--run"):
        if flag in args:
            return Path(args[args.index(flag) + 1])
    if module.endswith("train"):
        from .config import load_config

        preset = args[args.index("--config") + 1] if "--config" in args else "digits"
        return Path("runs") / load_config(preset).name
    return None


def launch(module: str = "ddpm_lib.train", args: list[str] | tuple[str, ...] = (), nproc: int | str = "auto",
           max_restarts: int = 0, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None,
           env: dict | None = None, cwd: str | Path | None = None, tail: int = 40, echo: bool = True) -> Path | None:
    """Run ``torchrun ... -m module args`` to completion, streaming its output; return the run directory.

    ``nproc="auto"`` is one rank per GPU, or 2 CPU ranks without GPUs. Raises
    :class:`LaunchError` (with the last ``tail`` lines) when torchrun fails, and a
    one-line ``DDPMError`` before starting when the rendezvous port is taken.
    """
    args = [str(a) for a in args]
    n = default_nproc() if nproc == "auto" else int(nproc)
    if n < 1:
        raise DDPMError(f"nproc must be at least 1, got {nproc}")
    if torch.cuda.is_available() and n > torch.cuda.device_count() and "train.device=cpu" not in args:
        raise DDPMError(f"nproc={n} but this machine has {torch.cuda.device_count()} GPU(s); "
                        f"use nproc<={torch.cuda.device_count()} or pass --set train.device=cpu")
    if rdzv_endpoint and node_rank == 0:
        host, _, port = rdzv_endpoint.rpartition(":")
        if host in ("127.0.0.1", "localhost", "0.0.0.0", socket.gethostname()) and port_in_use(host, int(port)):
            raise DDPMError(f"rendezvous port {port} on {host} is already in use; pick another port in rdzv_endpoint")
    command = torchrun_command(module, args, n, max_restarts, nnodes, node_rank, rdzv_endpoint)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    last = deque(maxlen=tail)
    errors = []  # our programs' one-line "error: ..." messages, which torchrun's report can push out of the tail
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=child_env, cwd=cwd, start_new_session=True)
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
