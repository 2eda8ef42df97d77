"""evaluate.py: metrics.json, the real-vs-real baseline, trained beats untrained, sweeps, CLI errors."""

import io
import json
import shutil

import numpy as np
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


# --- refused input: one line, exit 2, nothing written -----------------------------------------

@pytest.fixture
def bare_run(tmp_path, trained_run):
    """A copy of the trained run holding only ema.pt, so a test can see that nothing was written."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "ema.pt", run / "ema.pt")
    return run


def assert_nothing_written(tmp_path, run):
    assert sorted(tmp_path.rglob("*")) == [run, run / "ema.pt"]


def assert_main_refuses(main, argv, capsys, *words):
    """In-process twin of ``assert_one_line_error``: exit 2 and one ``error: ...`` line naming ``words``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("args, words", [
    (["--batch-size", "0"], ["--batch-size", "at least 1", "got 0"]),
    (["--batch-size", "-4"], ["--batch-size", "got -4"]),
    (["--seed", str(2**63)], ["--seed", "2147483647"]),
    (["--seed", "-1"], ["--seed", "got -1"]),
    (["--guidance", "nan"], ["--guidance", "finite number >= 0", "got nan"]),
    (["--guidance", "inf"], ["--guidance", "got inf"]),
    (["--guidance", "-1"], ["--guidance", "got -1.0"]),
    (["--eta", "1.5"], ["--eta", "between 0", "got 1.5"]),
    (["--eta", "-0.1"], ["--eta", "got -0.1"]),
    (["--eta", "nan"], ["--eta", "got nan"]),
    (["--per-class", "0"], ["--per-class", "at least 1"]),
    (["--steps", "201"], ["--steps", "1 to 200"]),
    (["--name", "../outside"], ["--name", "plain file stem", "'../outside'"]),
    (["--name", "../../outside"], ["--name", "plain file stem"]),
    (["--name", "sub/dir"], ["--name", "no '/'"]),
    (["--name", ".."], ["--name"]),
    (["--name", ""], ["--name"]),
])
def test_sample_cli_refuses_bad_flags(bare_run, tmp_path, capsys, args, words):
    from ddpm_lib.sample import main

    assert_main_refuses(main, ["--run-dir", str(bare_run), "--quiet", *args], capsys, *words)
    assert_nothing_written(tmp_path, bare_run)


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_samples(path, **changes):
    """A samples .npz like :func:`ddpm_lib.sample.save_samples` writes (20 blank 8 px digits),
    with ``changes`` replacing arrays (``None`` leaves one out)."""
    arrays = {"images": np.zeros((20, 1, 8, 8), np.uint8), "labels": np.arange(20) % 10,
              "class_names": np.array(DIGITS), "settings": np.array("{}"), **changes}
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})


def _truncated(path):
    write_samples(path)
    path.write_bytes(path.read_bytes()[:300])


BAD_SAMPLES = {
    "garbage": (lambda p: p.write_bytes(b"not a zip at all" * 8), ["not a readable samples .npz"]),
    "empty file": (lambda p: p.write_bytes(b""), ["not a readable samples .npz"]),
    "truncated zip": (_truncated, ["not a readable samples .npz"]),
    "directory": (lambda p: p.mkdir(), ["is a directory"]),
    "npy not npz": (lambda p: p.write_bytes(_npy_bytes()), ["single .npy array"]),
    "pickled objects": (lambda p: write_samples(p, images=np.array([None, 1], dtype=object)), ["never needs unpickling"]),
    "no labels": (lambda p: write_samples(p, labels=None), ["lacks labels"]),
    "float images": (lambda p: write_samples(p, images=np.zeros((20, 1, 8, 8), np.float32)), ["images must be uint8", "float32"]),
    "3-d images": (lambda p: write_samples(p, images=np.zeros((20, 8, 8), np.uint8)), ["(N, C, H, W)", "(20, 8, 8)"]),
    "float labels": (lambda p: write_samples(p, labels=np.zeros(20)), ["labels must be integers", "float64"]),
    "2-d labels": (lambda p: write_samples(p, labels=np.zeros((20, 1), np.int64)), ["labels must be integers", "(20, 1)"]),
    "length mismatch": (lambda p: write_samples(p, labels=np.arange(19) % 10), ["20 images but 19 labels"]),
    "label too big": (lambda p: write_samples(p, labels=np.full(20, 10)), ["labels must lie in 0..9", "got 10..10"]),
    "negative label": (lambda p: write_samples(p, labels=np.full(20, -1)), ["labels must lie in 0..9"]),
    "no samples": (lambda p: write_samples(p, images=np.zeros((0, 1, 8, 8), np.uint8), labels=np.zeros(0, np.int64)),
                   ["holds no samples"]),
    "numeric class names": (lambda p: write_samples(p, class_names=np.arange(10)), ["class_names must be"]),
    "bad settings": (lambda p: write_samples(p, settings=np.array("{oops")), ["settings is not valid JSON"]),
    # well-formed files that do not fit the 8 px grey run
    "16 px": (lambda p: write_samples(p, images=np.zeros((20, 1, 16, 16), np.uint8)), ["(1, 16, 16)", "(1, 8, 8)"]),
    "rgb": (lambda p: write_samples(p, images=np.zeros((20, 3, 8, 8), np.uint8)), ["(3, 8, 8)", "(1, 8, 8)"]),
    "one sample": (lambda p: write_samples(p, images=np.zeros((1, 1, 8, 8), np.uint8), labels=np.zeros(1, np.int64)),
                   ["holds 1 sample", "at least 2"]),
}


def _npy_bytes():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((20, 1, 8, 8), np.uint8))
    return buffer.getvalue()


@pytest.mark.parametrize("case", BAD_SAMPLES)
def test_evaluate_refuses_bad_samples_files(bare_run, tmp_path, capsys, case):
    from ddpm_lib.evaluate import main

    make, words = BAD_SAMPLES[case]
    samples = bare_run / "samples" / "eval.npz"
    samples.parent.mkdir()
    make(samples)
    written = sorted(tmp_path.rglob("*"))
    assert_main_refuses(main, ["--run-dir", str(bare_run), "--samples", str(samples), "--inception", "off"], capsys,
                        str(samples), *words, "python -m ddpm_lib.sample --run-dir")
    assert sorted(tmp_path.rglob("*")) == written  # no metrics.json, classifier.pt or eval/


def test_load_samples_reads_what_save_samples_wrote(tmp_path):
    from ddpm_lib.sample import load_samples, sample_settings, save_samples

    labels = torch.arange(20) % 10
    npz, _ = save_samples(torch.zeros(20, 1, 8, 8, dtype=torch.uint8), labels, DIGITS, tmp_path, "ok", {"steps": 5})
    images, loaded, names = load_samples(npz)
    assert images.shape == (20, 1, 8, 8) and loaded.dtype == torch.int64 and loaded.tolist() == labels.tolist()
    assert names == DIGITS and sample_settings(npz) == {"steps": 5}


@pytest.mark.parametrize("settings, kwargs, words", [
    ([{"guidance": float("nan")}], {}, ["guidance must be a finite number >= 0", "nan"]),
    ([{"guidance": float("inf")}], {}, ["guidance", "inf"]),
    ([{"guidance": -1.0}], {}, ["guidance", "-1.0"]),
    ([{"eta": 1.5}], {}, ["eta must be between 0", "1.5"]),
    ([{"eta": float("nan")}], {}, ["eta", "nan"]),
    ([{"steps": 0}], {}, ["steps must be a whole number from 1 to 200"]),
    ([{"steps": 250}], {}, ["steps", "250"]),
    ([{"steps": 5.5}], {}, ["steps", "5.5"]),
    ([{"sampler": "euler"}], {}, ["sampler must be ddpm or ddim"]),
    ([{"steps": 5}, {"guidance": float("nan")}], {}, ["sweep setting {'guidance': nan}"]),  # checked before any work
    ([{"cfg": 2}], {}, ["unknown sweep setting", "cfg"]),
    ([{"steps": 5}], {"per_class": 1}, ["per_class must be at least 2"]),
    ([{"steps": 5}], {"seed": -1}, ["seed", "2147483647"]),
    ([{"steps": 5}], {"batch_size": 0}, ["batch_size", "at least 1"]),
    ([{"steps": 5}], {"device": "bogus"}, ["unknown device 'bogus'"]),
    ([{"steps": 5}], {"device": "cuda:999"}, ["cuda:999"]),
])
def test_quality_sweep_refuses_bad_settings(bare_run, tmp_path, settings, kwargs, words):
    from ddpm_lib.errors import DDPMError

    with pytest.raises(DDPMError) as err:
        quality_sweep(bare_run, settings, **{"per_class": 2, "progress": False, **kwargs})
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert_nothing_written(tmp_path, bare_run)  # no classifier.pt: refused before any work


def test_run_sweep_steps_fit_the_run(trained_run, monkeypatch):
    """A run of T = 200 steps cannot take SWEEPS' 250 DDIM steps: the sweep stops at T, then the DDPM chain."""
    import ddpm_lib.evaluate as ev

    class Stop(Exception):
        pass

    seen = []

    def record(run_dir, settings, **kwargs):
        seen.extend(settings)
        raise Stop  # before anything is sampled or written

    monkeypatch.setattr(ev, "quality_sweep", record)
    with pytest.raises(Stop):
        ev.run_sweep(trained_run, "steps", per_class=2, progress=False)
    assert [s.get("steps") for s in seen] == [2, 5, 10, 20, 50, 100, None] and seen[-1]["sampler"] == "ddpm"
