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


# ------------------------------------------------------------------ files from elsewhere never run code


class Payload:
    """What a crafted checkpoint carries: unpickling it with weights_only=False would run ``exec``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


def poison(path, marker):
    """Rewrite the checkpoint at ``path`` with a payload beside its real entries."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["extra"] = Payload(marker)
    torch.save(state, path)


@pytest.fixture
def poisoned_run(trained_run, tmp_path):
    import shutil

    run = tmp_path / "shared_by_a_stranger"
    shutil.copytree(trained_run, run)
    return run


def assert_refused(err, path, marker):
    message = str(err)
    assert "\n" not in message and str(path) in message and "nothing in it ran" in message, message
    assert not marker.exists()


def test_payload_in_ema_pt_never_runs_in_load_run_sample_or_explorer(poisoned_run, tmp_path, capsys):
    from ddpm_lib import sample
    from ddpm_lib.explorer import Explorer

    marker = tmp_path / "ran"
    poison(poisoned_run / "ema.pt", marker)
    with pytest.raises(DDPMError) as err:
        load_run(poisoned_run)
    assert_refused(err.value, poisoned_run / "ema.pt", marker)
    with pytest.raises(SystemExit) as exit_:
        sample.main(["--run-dir", str(poisoned_run), "--per-class", "1", "--name", "evil"])
    assert exit_.value.code == 2 and "nothing in it ran" in capsys.readouterr().err
    assert not (poisoned_run / "samples" / "evil.npz").exists()
    explorer = Explorer(poisoned_run)  # it loads the newest run as it starts
    assert explorer.model is None and "nothing in it ran" in explorer.status
    assert not marker.exists()


def test_payload_in_snapshot_never_runs_on_resume(poisoned_run, tmp_path):
    from ddpm_lib.config import config_from_dict
    from ddpm_lib.train import train

    marker = tmp_path / "ran"
    poison(poisoned_run / "snapshot.pt", marker)
    cfg = config_from_dict(yaml_config(poisoned_run))
    before = (poisoned_run / "snapshot.pt").read_bytes()
    with pytest.raises(DDPMError) as err:
        train(cfg, poisoned_run, progress=False)
    assert_refused(err.value, poisoned_run / "snapshot.pt", marker)
    assert (poisoned_run / "snapshot.pt").read_bytes() == before
    with pytest.raises(DDPMError):
        load_run(poisoned_run, "snapshot-ema")
    assert not marker.exists()


def test_payload_in_classifier_cache_never_runs_in_evaluate(poisoned_run, tmp_path):
    from ddpm_lib.data import load_digits
    from ddpm_lib.metrics import load_or_train_classifier

    marker = tmp_path / "ran"
    cache = poisoned_run / "classifier.pt"
    torch.save({"key": {}, "model": {}, "accuracy": 1.0, "extra": Payload(marker)}, cache)
    with pytest.raises(DDPMError) as err:
        load_or_train_classifier(load_digits(8), cache)
    assert_refused(err.value, cache, marker)


def yaml_config(run):
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


# ------------------------------------------------------------------ weights that do not fit, or diverged


def rewrite(path, change):
    state = torch.load(path, map_location="cpu", weights_only=True)
    change(state)
    torch.save(state, path)


def test_weights_that_do_not_match_the_config_are_one_line(poisoned_run):
    rewrite(poisoned_run / "ema.pt", lambda s: s["config"]["model"].update(base_channels=64))
    with pytest.raises(DDPMError, match="weights do not fit the model its config describes") as err:
        load_run(poisoned_run)
    assert "\n" not in str(err.value)


def test_nan_weights_are_refused(poisoned_run):
    def diverge(state):
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name] = torch.full_like(state["model"][name], float("nan"))

    rewrite(poisoned_run / "ema.pt", diverge)
    with pytest.raises(DDPMError, match="non-finite weights .* the run diverged"):
        load_run(poisoned_run)


@pytest.mark.parametrize("change,words", [
    (lambda s: s.pop("class_names"), ["no 'class_names' entry"]),
    (lambda s: s.update(class_names="0123"), ["invalid class names"]),
    (lambda s: s.update(in_channels=7), ["in_channels 1 or 3"]),
    (lambda s: s["config"]["train"].update(lr="fast"), ["invalid config", "train.lr"]),
])
def test_incomplete_or_invalid_checkpoints_are_one_line(poisoned_run, change, words):
    rewrite(poisoned_run / "ema.pt", change)
    with pytest.raises(DDPMError) as err:
        load_run(poisoned_run)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_paths_that_are_files_or_folders_say_so(tmp_path):
    (tmp_path / "run.txt").write_text("not a run")
    with pytest.raises(DDPMError, match="is a file, not a run directory"):
        load_run(tmp_path / "run.txt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(DDPMError, match="is a folder, not a file"):
        load_checkpoint(tmp_path / "dir.pt")


# ------------------------------------------------------------------ file-system faults


@pytest.mark.parametrize("code,fix", [(28, "free some disk space"), (30, "read-only")])
def test_write_faults_are_one_line_and_keep_the_old_file(tmp_path, monkeypatch, code, fix):
    from ddpm_lib.errors import WriteError

    path = tmp_path / "snapshot.pt"
    atomic_save({"config": {}, "step": 1}, path)

    def fault(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: fault(fd, b""))
    with pytest.raises(WriteError) as err:
        atomic_save({"config": {}, "step": 2}, path)
    monkeypatch.undo()
    assert fix in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["snapshot.pt"]


def test_writing_under_a_file_is_one_line(tmp_path):
    from ddpm_lib.errors import WriteError

    (tmp_path / "runs").write_text("a file where a folder should be")
    with pytest.raises(WriteError, match="a part of that path is a file"):
        atomic_save({"config": {}}, tmp_path / "runs" / "digits" / "ema.pt")


def test_cli_turns_an_unexpected_os_error_into_one_line(tmp_path, capsys, monkeypatch):
    from ddpm_lib.errors import cli

    @cli
    def main():
        open(tmp_path / "missing" / "x.txt")

    monkeypatch.delenv("DDPM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "x.txt" in err and "DDPM_DEBUG" in err


def test_a_run_saved_before_prediction_existed_loads_as_eps(trained_run, tmp_path):
    """Checkpoints from before diffusion.prediction existed were eps-trained; today's default (v) must not apply."""
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(trained_run, old)
    for name in ("ema.pt", "snapshot.pt"):
        ckpt = torch.load(old / name, weights_only=True)
        del ckpt["config"]["diffusion"]["prediction"]
        torch.save(ckpt, old / name)
    assert load_run(old)[1].diffusion.prediction == "eps"
    assert load_run(old, weights="snapshot-ema")[1].diffusion.prediction == "eps"
    assert load_run(trained_run)[1].diffusion.prediction == "v"  # a run that saved the key keeps it
