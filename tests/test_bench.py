"""scripts/bench.py: the models are matched, the quick run writes complete rows, errors are clear."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_lib import perf
from ddpm_lib.unet import count_parameters

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench.py"

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset,channels,size", [("tiny", 1, 16), ("cifar", 3, 32)])
def test_diffusers_model_matches_ours_in_parameters_and_flops(bench, preset, channels, size):
    a, b = bench.ours(preset, channels, size), bench.theirs(preset, channels, size)
    x = torch.randn(2, channels, size, size)
    t, y = torch.tensor([3, 900]), torch.tensor([1, 10])  # 10 = the null class
    flops_a = perf.count_flops(lambda: bench.network(a)(x, t, y))
    flops_b = perf.count_flops(lambda: bench.network(b)(x, t, y))
    assert abs(count_parameters(a) / count_parameters(b) - 1) < 0.10
    assert abs(flops_a / flops_b - 1) < 0.10
    assert bench.network(b)(x, t, y).shape == x.shape


def test_manual_attention_equals_sdpa(bench):
    from ddpm_lib.unet import SelfAttention

    torch.manual_seed(0)
    layer = SelfAttention(32, num_heads=2)
    torch.nn.init.normal_(layer.proj.weight)  # not the zero init, so attention shows in the output
    x = torch.randn(2, 32, 4, 4)
    assert torch.allclose(layer(x), bench.manual_attention(layer, x), atol=1e-5)


def test_quick_run_writes_rows_for_both_models_and_every_lever(tmp_path):
    out = tmp_path / "bench.jsonl"
    run = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "throughput,levers", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    throughput = [r for r in rows if r["section"] == "throughput"]
    assert {(r["model"], r["variant"]) for r in throughput} == {
        (m, v) for m in ("ddpm_lib", "diffusers") for v in ("default", "channels_last")}
    levers = {r["variant"] for r in rows if r["section"] == "levers"}
    assert {"default", "channels_last", "fused_adamw", "threads_1", "manual_attention", "no_attention",
            "item_per_step", "dataloader"} <= levers
    for r in rows:
        assert r["train_img_per_s"] > 0 and r["params"] > 1e6 and r["fwd_flops_per_img"] > 1e8
        assert r["train_flops_per_img"] > 2 * r["fwd_flops_per_img"]  # backward costs more than forward
        assert 0 < r["train_mfu"] < 1.5 and r["matmul_peak_flops"] > 0
        assert r["peak_memory_bytes"] > 4 * 4 * r["params"]
        assert r["torch"] == torch.__version__ and r["device"] == "cpu" and r["threads"] in (1, 2)
    assert "throughput:" in run.stdout and "| ddpm_lib | default | 64 |" in run.stdout  # the report's tables


def test_ttq_ratio_is_an_upper_bound_when_the_baseline_never_arrives(bench):
    ours = {"reached_s": 100.0, "trained_s": 100.0}
    assert bench._ttq_ratio(ours, {"reached_s": 400.0, "trained_s": 400.0}) == {"ratio": 0.25, "bound": "measured"}
    bound = bench._ttq_ratio(ours, {"reached_s": None, "trained_s": 600.0})
    assert bound["ratio"] == pytest.approx(1 / 6) and bound["bound"].startswith("upper")
    assert bench._ttq_ratio({"reached_s": None, "trained_s": 600.0}, ours)["ratio"] is None
    seeds = [ours, {"reached_s": 200.0, "trained_s": 200.0}]  # over seeds, the slowest counts
    assert bench._ttq_ratio(seeds, {"reached_s": 400.0, "trained_s": 400.0})["ratio"] == 0.5


def test_gpu_predictions_cover_both_presets_links_and_world_sizes(bench):
    rows = bench.gpu_predictions()
    assert {(r["preset"], r["gpus"]) for r in rows} == {(p, n) for p in ("tiny", "cifar") for n in (1, 2, 4, 8)}
    assert all(r["predicted_efficiency"] == 1.0 for r in rows if r["gpus"] == 1)
    cifar = [r for r in rows if r["preset"] == "cifar"]
    assert cifar[0]["grad_bytes"] == 4 * cifar[0]["params"] and 30e6 < cifar[0]["params"] < 45e6


@pytest.mark.parametrize("argv,message", [
    (["--mode", "gpu"], "--mode gpu needs a CUDA device"),
    (["--only", "speed"], "unknown section(s) speed"),
])
def test_bad_arguments_give_one_clear_line(argv, message):
    if argv[:2] == ["--mode", "gpu"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_gpu_mode_code_path_runs_on_the_cpu_in_bf16(tmp_path):
    """--mode gpu --device cpu: the cifar preset, bf16 autocast, the GPU mode's rows (tiny batches)."""
    out = tmp_path / "gpu_on_cpu.jsonl"
    run = subprocess.run([sys.executable, str(BENCH), "--mode", "gpu", "--device", "cpu", "--quick", "--only",
                          "throughput", "--batch-sizes", "2", "--sample-batch", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["model"] for r in rows} == {"ddpm_lib", "diffusers"}
    for r in rows:
        assert r["dtype"] == "bfloat16" and r["batch_size"] == 2 and r["sample_batch"] == 2
        assert 35e6 < r["params"] < 42e6 and r["fwd_flops_per_img"] > 1e10  # the ~38M cifar preset at 32 px


def test_quick_time_to_quality_ablations_and_busy_machine_rows(tmp_path, bench):
    """The ttq section writes one row per recipe and seed plus the diffusers baseline, each judged
    against its targets; the ablations one row per lever; the busy section times every thread count
    idle and with a core kept busy."""
    out = tmp_path / "bench.jsonl"
    run = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "ttq,ablations,busy", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ttq = [r for r in rows if r["section"] == "ttq"]
    assert [(r["model"], r["variant"]) for r in ttq] == [("ddpm_lib", "learner"), ("ddpm_lib", "default"),
                                                         ("diffusers", "default")]
    assert ttq[0]["targets"] == {"class_accuracy": 0.95}
    assert ttq[1]["targets"] == ttq[2]["targets"] == {"class_accuracy": 0.99, "fid_ratio": 1.3}
    for r in ttq:
        assert r["curve"] and r["steps"] == r["curve"][-1]["step"] > 0 and r["final_fid_real"] > 0
        assert 0 <= r["final_class_accuracy"] <= 1 and r["trained_s"] > 0 and r["eval_samples"] == 20
        met = [c for c in r["curve"] if c["class_accuracy"] >= r["targets"]["class_accuracy"]
               and c["fid"] <= r["targets"].get("fid_ratio", float("inf")) * c["fid_real"]]
        assert (r["reached_s"] is None) == (not met)  # reached exactly when a judged point met every target
    ablations = [r for r in rows if r["section"] == "ablations"]
    assert [r["variant"] for r in ablations] == ["default", *list(bench.LEVER_ABLATIONS)[:2]]
    assert ablations[1]["overrides"] == bench.LEVER_ABLATIONS[ablations[1]["variant"]]
    busy = [r for r in rows if r["section"] == "busy"]
    assert {r["condition"] for r in busy} == {"idle", "one core busy"}
    assert sum(r["library_default"] for r in busy) == 2 and all(r["train_img_per_s"] > 0 for r in busy)
    assert "time to quality" in run.stdout and "levers (the default recipe" in run.stdout and "busy machine" in run.stdout


def test_meets_needs_every_target(bench):
    point = {"class_accuracy": 0.99, "fid": 0.13, "fid_real": 0.1}
    assert bench.meets(point, {"class_accuracy": 0.99, "fid_ratio": 1.3})
    assert not bench.meets(point, {"class_accuracy": 0.995})
    assert not bench.meets({**point, "fid": 0.14}, {"class_accuracy": 0.99, "fid_ratio": 1.3})
    assert bench.meets({**point, "fid": 5.0}, {"class_accuracy": 0.95})  # no FID target
