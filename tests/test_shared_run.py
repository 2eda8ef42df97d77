"""The course's shared model: trained once where it is missing, then found and reused."""

from conftest import TINY

from ddpm_lib.checkpoint import load_run
from ddpm_lib.shared_run import SHARED, shared_run, shared_run_dir

SMALL = (*TINY, "train.max_steps=6", "train.log_every=2", "train.snapshot_every=2")


def test_learner_and_quick_modes_use_their_own_folders_and_presets(tmp_path):
    assert shared_run_dir(False, tmp_path) == tmp_path / "learner" and SHARED[False][1] == "learner"
    assert shared_run_dir(True, tmp_path) == tmp_path / "learner_quick" and SHARED[True][1] == "digits_quick"


def test_trains_once_then_reuses(tmp_path, capsys):
    run_dir = shared_run(True, tmp_path, overrides=SMALL)
    assert run_dir == tmp_path / "learner_quick" and (run_dir / "ema.pt").exists()
    assert "training the digits_quick preset" in capsys.readouterr().out
    weights = (run_dir / "ema.pt").read_bytes()
    assert shared_run(True, tmp_path, overrides=SMALL) == run_dir
    assert "using the shared model" in capsys.readouterr().out
    assert (run_dir / "ema.pt").read_bytes() == weights  # found, not trained again
    assert load_run(run_dir)[3]["step"] == 6


def test_chunks_call_back_after_each_and_an_interrupted_run_resumes(tmp_path):
    seen = []
    run_dir = shared_run(True, tmp_path, chunk=4, on_chunk=lambda d: seen.append(load_run(d, "snapshot-ema")[3]["step"]),
                         overrides=SMALL)
    assert seen == [4, 6] and (run_dir / "ema.pt").exists()
    # a run whose ema.pt is missing (killed while writing it) is completed from its snapshot, not retrained
    (run_dir / "ema.pt").unlink()
    seen.clear()
    shared_run(True, tmp_path, chunk=4, on_chunk=lambda d: seen.append(1), overrides=SMALL)
    assert (run_dir / "ema.pt").exists() and load_run(run_dir)[3]["step"] == 6
