import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Tiny settings shared by the tests that train: 8 px digits, a 2-level U-Net, a few steps.
TINY = ["data.img_size=8", "model.base_channels=16", "model.channel_mult=[1, 2]", "model.attn_resolutions=[4]",
        "diffusion.timesteps=100", "train.batch_size=32", "train.lr_warmup_steps=5", "sample.steps=10",
        "sample.per_class=2"]


from ddpm_lib import dist as _dist  # noqa: E402

REAL_BUSY_CORES = _dist.busy_cores


@pytest.fixture(autouse=True)
def _threads(monkeypatch):
    """Two threads, and a machine that counts as idle: ``train.threads=0`` must not pick fewer
    threads because something else ran for a moment (runs compared bit for bit would differ)."""
    torch.set_num_threads(2)
    monkeypatch.setattr(_dist, "busy_cores", lambda seconds=0.1: 0.0)


def run_module(module: str, *args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m ddpm_lib.<module> args`` and capture its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"ddpm_lib.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """A user error: exit code 2, a single ``error: ...`` line on stderr naming the problem."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


# A small model that draws recognisable digits (the ``digits_quick`` preset: 8 px, 200
# steps, about 30 s on 2 cores), shared by the evaluation, explorer and browser tests. Its
# untrained twin (1 step) is the "worse model" the metrics must tell apart.
def _train_quick(run_dir: Path, steps: int) -> Path:
    from ddpm_lib.config import load_config
    from ddpm_lib.train import train

    train(load_config("digits_quick", [f"train.max_steps={steps}"]), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    return _train_quick(tmp_path_factory.mktemp("runs") / "digits8", steps=200)


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    return _train_quick(tmp_path_factory.mktemp("runs") / "untrained", steps=1)
