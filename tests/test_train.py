"""Training end to end on a tiny setting: outputs, exact resume, refusals, NaN handling."""

import json

import pytest
import torch

import ddpm_lib.train as train_module
from conftest import TINY, assert_one_line_error, run_module
from ddpm_lib.checkpoint import load_checkpoint, load_run
from ddpm_lib.config import load_config
from ddpm_lib.errors import DDPMError
from ddpm_lib.train import lr_at, train


def tiny_config(*extra):
    return load_config("digits", [*TINY, "train.max_steps=20", "train.log_every=5", "train.snapshot_every=10", *extra])


def test_train_writes_run_directory(tmp_path):
    run = train(tiny_config(), tmp_path / "run", progress=False)
    assert {"config.yaml", "snapshot.pt", "ema.pt", "log.jsonl"} <= {p.name for p in run.iterdir()}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "img_per_s", "seconds"} <= set(records[0])
    assert all(r["loss"] > 0 for r in records)
    model, cfg, names, ckpt = load_run(run)
    assert names[:3] == ["zero", "one", "two"] and ckpt["step"] == 20 and cfg.data.img_size == 8
    assert model(torch.zeros(1, 1, 8, 8), torch.tensor([3]), torch.tensor([10])).shape == (1, 1, 8, 8)


def test_resume_is_bitwise_exact(tmp_path):
    cfg = tiny_config("data.hflip=true")  # flips draw from the global RNG too
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=7)  # mid-epoch, between snapshots
    assert load_checkpoint(tmp_path / "split" / "snapshot.pt")["state"]["step"] == 7
    assert not (tmp_path / "split" / "ema.pt").exists()
    train(cfg, tmp_path / "split", progress=False)
    a, b = (load_checkpoint(tmp_path / d / "snapshot.pt") for d in ("straight", "split"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["model"]:
        assert torch.equal(a["ema"]["model"][key], b["ema"]["model"][key]), key


def test_resume_across_epoch_boundary(tmp_path):
    # 1797 digits / 32 = 56 batches per epoch: stop right at the boundary and resume
    cfg = tiny_config("train.max_steps=60", "train.log_every=20", "train.snapshot_every=100")
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=56)
    train(cfg, tmp_path / "split", progress=False)
    a, b = (load_checkpoint(tmp_path / d / "snapshot.pt") for d in ("straight", "split"))
    assert a["state"] == b["state"] == {"step": 60, "epoch": 1, "seen": 4 * 32}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_never_refuses_existing_run(tmp_path):
    train(tiny_config("train.max_steps=5"), tmp_path / "run", progress=False)
    with pytest.raises(DDPMError, match="already holds a trained run"):
        train(tiny_config("train.max_steps=5"), tmp_path / "run", resume="never", progress=False)


def test_resume_with_different_config_names_the_keys(tmp_path):
    train(tiny_config("train.max_steps=5"), tmp_path / "run", progress=False)
    with pytest.raises(DDPMError, match=r"train\.lr differ"):
        train(tiny_config("train.max_steps=5", "train.lr=0.01"), tmp_path / "run", progress=False)
    # changing only the length of the run is allowed: it continues
    train(tiny_config("train.max_steps=8"), tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "snapshot.pt")["state"]["step"] == 8


def test_nan_loss_stops_and_keeps_last_good_snapshot(tmp_path, monkeypatch):
    real_loss = train_module.diffusion_loss
    calls = {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 13 else loss

    monkeypatch.setattr(train_module, "diffusion_loss", flaky_loss)
    with pytest.raises(DDPMError, match=r"loss became nan within steps 11-15"):
        train(tiny_config(), tmp_path / "run", progress=False)
    snapshot = load_checkpoint(tmp_path / "run" / "snapshot.pt")
    assert snapshot["state"]["step"] == 10
    assert all(torch.isfinite(v).all() for v in snapshot["model"].values())


def test_lr_schedule_warmup_then_cosine():
    cfg = load_config("digits", ["train.lr=1e-3", "train.lr_warmup_steps=10", "train.lr_min_ratio=0.1"])
    assert lr_at(0, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(9, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(55, 100, cfg) == pytest.approx(0.55e-3)
    assert lr_at(100, 100, cfg) == pytest.approx(1e-4)
    const = load_config("digits", ["train.lr_schedule=constant", "train.lr_warmup_steps=0"])
    assert lr_at(50, 100, const) == const.train.lr


def test_cli_train_sample_evaluate(tmp_path):
    run = tmp_path / "cli"
    sets = [arg for item in TINY + ["train.max_steps=12"] for arg in ("--set", item)]
    proc = run_module("train", "--config", "digits", *sets, "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "[train] done: 12 steps" in proc.stdout
    proc = run_module("sample", "--run", str(run), "--classes", "three", "7", "--per-class", "3", "--steps", "5")
    assert proc.returncode == 0, proc.stderr
    import numpy as np
    with np.load(run / "samples" / "samples.npz") as f:
        assert f["images"].shape == (6, 1, 8, 8) and f["images"].dtype == np.uint8
        assert f["labels"].tolist() == [3, 3, 3, 7, 7, 7]
    assert (run / "samples" / "grid.png").stat().st_size > 0
    proc = run_module("evaluate", "--run", str(run))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == 6 and 0 <= metrics["class_accuracy"] <= 1
    assert metrics["classifier_heldout_accuracy"] >= 0.9


@pytest.mark.parametrize("args,words", [
    (["--config", "digitz"], ["unknown preset 'digitz'", "did you mean 'digits'"]),
    (["--set", "train.lrr=1"], ["unknown config key train.lrr", "did you mean train.lr"]),
    (["--set", "train.epochs=ten"], ["train.epochs expects int"]),
    (["--set", "data.img_size=18"], ["divisible by 4"]),
    (["--config", "dtd_full", "--set", "data.data_dir=/nonexistent/dtd"], ["/nonexistent/dtd", "does not exist"]),
])
def test_cli_train_bad_input(tmp_path, args, words):
    proc = run_module("train", *args, "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "r" / "snapshot.pt").exists()


def test_cli_sample_bad_input(tmp_path):
    assert_one_line_error(run_module("sample", "--run", str(tmp_path / "nope")), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_module("sample", "--run", str(tmp_path / "empty")), "no ema.pt")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ema.pt").write_bytes(b"PK\x03\x04 truncated")
    assert_one_line_error(run_module("sample", "--run", str(tmp_path / "bad")), "corrupt or truncated")


def test_cli_train_names_a_corrupt_image(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(tmp_path / "data" / cls / f"{i}.png")
    (tmp_path / "data" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    proc = run_module("train", "--config", "dtd_filtered", "--set", f"data.data_dir={tmp_path / 'data'}",
                      "--set", "data.classes=null", "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(proc, "broken.png", "ddpm_lib.data check")


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_a_gpu(tmp_path):
    from ddpm_lib.train import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    run = train(tiny_config("train.amp=bf16", "train.max_steps=6"), tmp_path / "bf16", progress=False)
    assert all(json.loads(line)["loss"] > 0 for line in (run / "log.jsonl").read_text().splitlines())
    if not torch.cuda.is_available():
        with pytest.raises(DDPMError, match="train.amp=fp16 needs a CUDA device"):
            train(tiny_config("train.amp=fp16"), tmp_path / "fp16", progress=False)


def test_training_a_finished_run_again_takes_no_step(tmp_path):
    cfg = tiny_config("train.max_steps=6")
    train(cfg, tmp_path / "run", progress=False)
    before = load_checkpoint(tmp_path / "run" / "snapshot.pt")
    train(cfg, tmp_path / "run", progress=False)
    after = load_checkpoint(tmp_path / "run" / "snapshot.pt")
    assert after["state"] == before["state"] == {"step": 6, "epoch": 0, "seen": 6 * 32}
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert load_checkpoint(tmp_path / "run" / "ema.pt")["step"] == 6


# ------------------------------------------------------------------ the run directory belongs to training


def snapshot_of(run):
    return load_checkpoint(run / "snapshot.pt")


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("setup,words", [
    ("user_folder", ["is not empty and is not a run", "notes.txt"]),
    ("user_config", ["is not empty and is not a run", "config.yaml"]),
    ("weights_without_snapshot", ["ema.pt", "no snapshot.pt", "overwrite"]),
    ("a_file", ["is a file"]),
    ("user_tmp_file", ["is not empty and is not a run", "draft.tmp"]),
    ("other_config_unfinished", ["is not empty and is not a run"]),
])
def test_training_never_writes_into_a_folder_it_does_not_own(tmp_path, setup, words):
    run = tmp_path / "target"
    if setup == "a_file":
        run.write_text("my essay")
    else:
        run.mkdir()
    if setup == "user_folder":
        (run / "notes.txt").write_text("my notes")
    elif setup == "user_tmp_file":  # only training's own temporary files are taken for leftovers
        (run / "draft.tmp").write_text("my draft")
    elif setup == "user_config":
        (run / "config.yaml").write_text("my_tool: {threshold: 3}\n")
        (run / "log.jsonl").write_text('{"step": 1}\n')
    elif setup == "weights_without_snapshot":  # a finished run whose snapshot was deleted, other config
        train(tiny_config("train.max_steps=4"), tmp_path / "other", progress=False)
        for name in ("ema.pt", "config.yaml", "log.jsonl"):
            (run / name).write_bytes((tmp_path / "other" / name).read_bytes())
    elif setup == "other_config_unfinished":  # killed before its first snapshot, with another lr
        train(tiny_config("train.max_steps=4", "train.lr=0.01"), tmp_path / "other", progress=False)
        for name in ("config.yaml", "log.jsonl"):
            (run / name).write_bytes((tmp_path / "other" / name).read_bytes())
    before = run.read_bytes() if run.is_file() else files_of(run)
    with pytest.raises(DDPMError) as err:
        train(tiny_config("train.max_steps=4"), run, progress=False)
    assert all(word in str(err.value) for word in words), str(err.value)
    assert (run.read_bytes() if run.is_file() else files_of(run)) == before  # every byte as it was


def test_training_writes_into_an_empty_folder_and_continues_an_unfinished_run(tmp_path):
    (tmp_path / "empty").mkdir()
    train(tiny_config("train.max_steps=4"), tmp_path / "empty", progress=False)
    assert snapshot_of(tmp_path / "empty")["state"]["step"] == 4
    # killed before its first snapshot: config.yaml of the same config and a log; training starts over
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "config.yaml").write_bytes((tmp_path / "empty" / "config.yaml").read_bytes())
    (run / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    train(tiny_config("train.max_steps=4", "train.log_every=1"), run, progress=False)
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_drops_log_records_past_the_snapshot_and_stale_temp_files(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config()  # log every 5, snapshot every 10, 20 steps
    train(cfg, run, progress=False, stop_after=12)
    # a crash after logging step 15 and while writing a snapshot: the log is ahead of snapshot.pt
    with open(run / "log.jsonl", "a") as log:
        log.write('{"step": 15, "loss": 1.0}\n{"step": 1')
    (run / ".snapshot.pt.k1ll3d.tmp").write_bytes(b"half a snapshot")
    train(cfg, run, progress=False)
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [5, 10, 12, 15, 20]
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_continue_a_run_from_its_folder_alone(tmp_path):
    # the hint load_run prints for a run without ema.pt: python -m ddpm_lib.train --run-dir RUN
    run = tmp_path / "run"
    train(tiny_config("train.max_steps=8"), run, progress=False, stop_after=4)
    with pytest.raises(DDPMError, match="has no ema.pt") as err:
        load_run(run)
    assert f"python -m ddpm_lib.train --run-dir {run}" in str(err.value)
    train_module.main(["--run-dir", str(run), "--quiet"])
    assert load_run(run)[3]["step"] == 8


def test_resume_with_flips_and_two_workers_is_bitwise_exact(tmp_path):
    cfg = tiny_config("data.hflip=true", "data.num_workers=2", "train.max_steps=16", "train.snapshot_every=100")
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_after=7)  # mid-epoch
    train(cfg, tmp_path / "split", progress=False)
    a, b = snapshot_of(tmp_path / "straight"), snapshot_of(tmp_path / "split")
    assert a["state"] == b["state"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["model"][k], b["ema"]["model"][k]) for k in a["ema"]["model"])


def test_deterministic_switch_is_scoped_to_the_run(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    seen = {}
    real = train_module.diffusion_loss

    def spy(*args, **kwargs):
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        return real(*args, **kwargs)

    train_module.diffusion_loss = spy
    try:
        train(tiny_config("train.max_steps=2", "train.deterministic=true"), tmp_path / "det", progress=False)
    finally:
        train_module.diffusion_loss = real
    assert seen["deterministic"] and not torch.are_deterministic_algorithms_enabled()


# ------------------------------------------------------------------ resuming with another world size


def test_planned_steps_complete_the_planned_epochs_on_any_world_size():
    from ddpm_lib.train import TrainState, planned_steps, skip_per_rank

    cfg = load_config("digits", ["train.batch_size=64", "train.epochs=8"])
    n = 1797  # 28 batches of 64 per epoch on 1 rank, 14 of 2 x 64 on 2 ranks
    assert planned_steps(TrainState(), n, 1, cfg) == 8 * 28
    assert planned_steps(TrainState(), n, 2, cfg) == 8 * 14
    # stopped at step 120 on 1 rank (epoch 4, 8 batches in), resumed on 2 ranks
    state = TrainState(step=120, epoch=4, seen=8 * 64)
    assert planned_steps(state, n, 1, cfg) == 224  # unchanged world size: the same plan
    total = planned_steps(state, n, 2, cfg)
    images = 120 * 64 + (total - 120) * 2 * 64
    assert abs(images - 224 * 64) <= 2 * 64  # the planned images, to within one global batch
    assert total == 120 + (1797 // 2 - skip_per_rank(512, 2)) // 64 + 3 * 14
    # max_steps still caps, and a finished run plans no more steps
    assert planned_steps(state, n, 2, load_config("digits", ["train.epochs=8", "train.max_steps=130"])) == 130
    assert planned_steps(TrainState(step=224, epoch=7, seen=28 * 64), n, 1, cfg) == 224


def test_resuming_a_run_saved_before_prediction_existed_names_the_one_real_difference(tmp_path):
    """An old snapshot (no diffusion.* lever keys) was eps-trained: resumed with today's default (v) it is
    refused naming diffusion.prediction alone, and with diffusion.prediction=eps it resumes."""
    train = train_module.train
    run = tmp_path / "old"
    sets = [*TINY, "train.max_steps=4", "train.log_every=2", "diffusion.prediction=eps"]
    train(load_config("digits", sets), run, progress=False, stop_after=2)
    snap = torch.load(run / "snapshot.pt", weights_only=True)
    for key in ("prediction", "loss_weight", "min_snr_gamma", "t_sampling", "zero_terminal_snr"):
        del snap["config"]["diffusion"][key]
    torch.save(snap, run / "snapshot.pt")
    with pytest.raises(DDPMError, match=r"\(diffusion\.prediction differ\)"):
        train(load_config("digits", sets[:-1]), run, progress=False)
    train(load_config("digits", sets), run, progress=False)
    assert (run / "ema.pt").exists()
