"""evaluate.py: metrics.json, the real-vs-real baseline, trained beats untrained, sweeps, CLI errors."""

import json

import pytest
import torch

from conftest import assert_one_line_error, run_module
from ddpm_lib.evaluate import SWEEPS, evaluate, quality_sweep


@pytest.fixture(scope="module")
def judged(trained_run, untrained_run):
    """Both runs sampled with the same settings (10 per class) and judged offline."""
    out = {}
    for name, run in (("trained", trained_run), ("untrained", untrained_run)):
        proc = run_module("sample", "--run-dir", str(run), "--per-class", "10", "--name", "eval", "--quiet")
        assert proc.returncode == 0, proc.stderr
        out[name] = evaluate(run, run / "samples" / "eval.npz", inception="off", progress=False)
    return out


def test_metrics_json_holds_every_number(judged, trained_run):
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert saved == judged["trained"]
    assert saved["num_samples"] == 100 and len(saved["per_class_accuracy"]) == 10
    assert {"fid", "fid_real", "kid", "kid_std", "kid_real", "is", "is_std", "is_real", "n"} <= set(saved["domain"])
    assert saved["sampling"]["sampler"] == "ddim" and saved["sampling"]["steps"] == 20  # from the run's config
    assert (trained_run / "eval" / "confusion.png").stat().st_size > 1000


def test_trained_model_scores_better_than_untrained(judged):
    good, bad = judged["trained"], judged["untrained"]
    assert good["class_accuracy"] >= 0.8 > 0.3 > bad["class_accuracy"]
    assert good["domain"]["fid"] < 5 * good["domain"]["fid_real"]  # near the real-vs-real floor
    assert bad["domain"]["fid"] > 10 * good["domain"]["fid"]
    assert bad["domain"]["kid"] > good["domain"]["kid"] and bad["domain"]["is"] < good["domain"]["is"]


def test_inception_auto_offline_records_why_and_keeps_domain_metrics(trained_run, monkeypatch):
    import ddpm_lib.evaluate as ev
    from ddpm_lib.metrics import InceptionUnavailable

    def unavailable(*args, **kwargs):
        raise InceptionUnavailable("Inception-v3 weights unavailable (test); pass --inception-weights FILE")

    monkeypatch.setattr(ev, "inception_metrics", unavailable)
    metrics = evaluate(trained_run, trained_run / "samples" / "eval.npz", inception="auto", progress=False)
    assert "--inception-weights" in metrics["inception"]["skipped"] and metrics["domain"]["fid"] > 0


def test_quality_sweep_rows(trained_run):
    rows = quality_sweep(trained_run, [{"sampler": "ddim", "steps": 5}, {"sampler": "ddpm", "guidance": 1.0}],
                         per_class=3, progress=False)
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [("ddim", 5, 10), ("ddpm", 200, 200)]
    assert all(0 <= r["class_accuracy"] <= 1 and r["fid"] > 0 and r["n"] == 30 for r in rows)
    assert set(SWEEPS) == {"steps", "guidance"}


def test_sample_cli_prompt(trained_run):
    proc = run_module("sample", "--run-dir", str(trained_run), "--prompt", "digit seven", "--per-class", "3",
                      "--name", "prompt7", "--quiet")
    assert proc.returncode == 0, proc.stderr
    from ddpm_lib.sample import load_samples

    _, labels, names = load_samples(trained_run / "samples" / "prompt7.npz")
    assert labels.tolist() == [names.index("seven")] * 3


@pytest.mark.parametrize("args, words", [
    (["--prompt", "a cat"], ["names none", "zero, one"]),
    (["--prompt", "seven", "--classes", "one"], ["either --classes or --prompt"]),
])
def test_sample_cli_bad_prompt(trained_run, args, words):
    assert_one_line_error(run_module("sample", "--run-dir", str(trained_run), *args), *words)


@pytest.mark.parametrize("args, words", [
    (["--inception", "on", "--inception-weights", "/nonexistent/w.pth"], ["does not exist", "--inception-weights"]),
    (["--sweep", "steps", "--per-class", "1"], ["--per-class must be at least 2"]),
])
def test_evaluate_cli_bad_input(trained_run, args, words):
    assert_one_line_error(run_module("evaluate", "--run-dir", str(trained_run), "--samples",
                                     str(trained_run / "samples" / "eval.npz"), *args), *words)


def test_evaluate_cli_missing_samples(tmp_path, trained_run):
    assert_one_line_error(run_module("evaluate", "--run-dir", str(trained_run), "--samples", str(tmp_path / "x.npz")),
                          "does not exist")
