"""Atomic writes and checkpoint loading errors."""

import os

import pytest
import torch

import ddpm_lib.checkpoint as checkpoint
from ddpm_lib.checkpoint import atomic_save, load_checkpoint, load_run
from ddpm_lib.errors import DDPMError


def test_atomic_save_round_trip(tmp_path):
    atomic_save({"config": {}, "x": torch.arange(3)}, tmp_path / "a" / "s.pt")
    assert torch.equal(load_checkpoint(tmp_path / "a" / "s.pt")["x"], torch.arange(3))
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["s.pt"]  # no temp file left behind


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "snapshot.pt"
    atomic_save({"config": {}, "step": 1}, path)

    def crash(*args):
        raise KeyboardInterrupt  # e.g. the job killed between the write and the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"config": {}, "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot.pt"]


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "snapshot.pt"
    atomic_save({"config": {}, "step": 1}, path)
    real_fsync = os.fsync

    def die_during_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", die_during_fsync)
    with pytest.raises(OSError):
        atomic_save({"config": {}, "step": 2, "big": torch.zeros(10000)}, path)
    monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
    assert load_checkpoint(path)["step"] == 1


def test_load_errors(tmp_path):
    with pytest.raises(DDPMError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    atomic_save({"config": {}, "w": torch.randn(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(DDPMError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(DDPMError, match="not a ddpm_lib checkpoint"):
        load_checkpoint(foreign)


def test_load_run_weights_choices(trained_run):
    from ddpm_lib.checkpoint import WEIGHTS, available_weights
    from ddpm_lib.errors import DDPMError

    assert available_weights(trained_run) == list(WEIGHTS)
    ema, _, _, ckpt = load_run(trained_run, "ema")
    snap_ema, _, _, snap = load_run(trained_run, "snapshot-ema")
    raw, _, _, _ = load_run(trained_run, "snapshot-raw")
    assert ckpt["step"] == snap["step"] == 200
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert same(ema, snap_ema) and not same(ema, raw)  # the EMA is not the raw weights
    with pytest.raises(DDPMError, match="unknown weights 'best'"):
        load_run(trained_run, "best")
