"""Distributed training and sampling on CPU with 2 gloo ranks under torchrun.

Covers: a 2-rank run; bitwise-exact resume across an interruption; a SIGKILLed worker
brought back by --max-restarts; SIGTERM preemption; EMA sync; sampler sharding;
distributed sampling equal to single-process sampling; two torchrun "nodes" on
loopback; the launch helper; and the bad-input errors.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch

from conftest import ROOT, TINY, assert_one_line_error, run_module
from ddpm_lib.checkpoint import load_checkpoint
from ddpm_lib.dist import setup
from ddpm_lib.errors import DDPMError
from ddpm_lib.launch import LaunchError, launch, port_in_use, run_dir_of, torchrun_command

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SETS = [a for item in TINY + ["train.log_every=5", "train.snapshot_every=5", "train.threads=1"]
        for a in ("--set", item)]


def torchrun(*args, nproc=2, extra=(), timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra, *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def train_args(run_dir, steps, *more):
    return ["-m", "ddpm_lib.train", "--config", "digits", *SETS, "--set", f"train.max_steps={steps}",
            "--run-dir", str(run_dir), *more]


def final_weights(run_dir):
    return load_checkpoint(run_dir / "snapshot.pt")


def assert_same_weights(a, b):
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["model"]:
        assert torch.equal(a["ema"]["model"][key], b["ema"]["model"][key]), key


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted 2-rank run of 30 steps: the reference for the resume tests."""
    run = tmp_path_factory.mktemp("dist") / "straight"
    proc = torchrun(*train_args(run, 30))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run, proc


@pytest.mark.parametrize("check", ["ema_sync", "sampler_shards", "collectives"])
def test_collectives_under_torchrun(check):
    proc = torchrun(str(ROOT / "tests" / "dist_checks.py"), check)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(f"{check} ok") == 2


def test_two_rank_training(straight_run):
    run, proc = straight_run
    snapshot = final_weights(run)
    assert snapshot["world_size"] == 2 and len(snapshot["rng"]) == 2 and snapshot["state"]["step"] == 30
    assert "2 rank(s) on cpu (gloo), batch 32/rank = 64 global" in proc.stdout
    assert proc.stdout.count("[train] done") == 1  # rank 0 alone talks
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert (run / "ema.pt").exists()


def test_two_rank_resume_is_bitwise_exact(straight_run, tmp_path):
    run = tmp_path / "split"
    first = torchrun(*train_args(run, 30, "--stop-after", "13"))
    assert first.returncode == 0 and "stopped at step 13" in first.stdout, first.stderr[-3000:]
    assert final_weights(run)["state"]["step"] == 13
    second = torchrun(*train_args(run, 30))
    assert second.returncode == 0 and "resuming from step 13" in second.stdout, second.stderr[-3000:]
    assert_same_weights(final_weights(straight_run[0]), final_weights(run))


def wait_for_step(run_dir, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = run_dir / "log.jsonl"
        if log.exists() and any(json.loads(line)["step"] >= step for line in log.read_text().splitlines() if line):
            return
        assert proc.poll() is None, "torchrun ended before the test could interrupt it"
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged")


def test_killed_worker_is_restarted_and_resumes(straight_run, tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=2",
           *train_args(run, 30, "--set", "train.log_every=1")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(run, 12, proc)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "ddpm_lib.train" in " ".join(p.cmdline())]
        assert len(workers) == 2
        workers[1].send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "resuming from step" in out  # the restarted workers picked up the snapshot by themselves
    assert final_weights(run)["state"]["step"] == 30
    assert_same_weights(final_weights(straight_run[0]), final_weights(run))


def test_sigterm_saves_snapshot_and_exits_cleanly(tmp_path):
    run = tmp_path / "preempted"
    cmd = [sys.executable, "-m", "ddpm_lib.train", "--config", "digits", *SETS, "--set", "train.max_steps=2000",
           "--set", "train.log_every=1", "--set", "train.snapshot_every=1000", "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run, 7, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert "SIGTERM received" in out
    step = final_weights(run)["state"]["step"]
    assert 7 <= step < 2000  # saved where it stopped, not at a scheduled snapshot


def test_sigterm_under_torchrun(tmp_path):
    run = tmp_path / "preempted2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_args(run, 2000, "--set", "train.log_every=1", "--set", "train.snapshot_every=1000")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run, 5, proc)
    for p in psutil.Process(proc.pid).children(recursive=True):  # as SLURM signals every task of the step
        if "ddpm_lib.train" in " ".join(p.cmdline()):
            p.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    snapshot = final_weights(run)
    assert 5 <= snapshot["state"]["step"] < 2000 and len(snapshot["rng"]) == 2


def test_distributed_sampling_matches_single_process(straight_run, tmp_path):
    run = straight_run[0]
    args = ["--run-dir", str(run), "--per-class", "3", "--steps", "5", "--batch-size", "7", "--quiet"]
    one = run_module("sample", *args, "--name", "one")
    assert one.returncode == 0, one.stderr
    two = torchrun("-m", "ddpm_lib.sample", *args, "--name", "two")
    assert two.returncode == 0, two.stderr[-3000:]
    with np.load(run / "samples" / "one.npz") as a, np.load(run / "samples" / "two.npz") as b:
        assert a["images"].shape == (30, 1, 8, 8)
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback(tmp_path):
    """scripts/multinode.sh, run as two "nodes" on this machine, trains one model together."""
    run = tmp_path / "multinode"
    port = free_port()
    nodes = []
    for node_rank in (0, 1):
        env = {**ENV, "NNODES": "2", "NODE_RANK": str(node_rank), "MASTER": f"127.0.0.1:{port}",
               "NPROC_PER_NODE": "1", "PYTHON": sys.executable, "MAX_RESTARTS": "0"}
        cmd = ["bash", "scripts/multinode.sh", *train_args(run, 10)[2:]]  # the script adds -m ddpm_lib.train
        nodes.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [n.communicate(timeout=180)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "2 rank(s) on cpu (gloo)" in "".join(outputs)
    assert final_weights(run)["world_size"] == 2
    with socket.socket() as s:  # node 0 refuses a rendezvous port that is taken, in one line
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        proc = subprocess.run(["bash", "scripts/multinode.sh", "--config", "digits"], cwd=ROOT, capture_output=True,
                              text=True, env={**ENV, "NNODES": "2", "NODE_RANK": "0", "MASTER": f"127.0.0.1:{taken}",
                                              "PYTHON": sys.executable, "NPROC_PER_NODE": "1"})
        assert_one_line_error(proc, f"port {taken} is already in use")


def test_launch_streams_and_returns_run_dir(tmp_path, capsys):
    run = launch("ddpm_lib.train", ["--config", "digits", *SETS, "--set", "train.max_steps=5", "--run-dir",
                                    str(tmp_path / "launched")], nproc=2, env={"PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert run == tmp_path / "launched" and (run / "ema.pt").exists()
    assert "[train] done: 5 steps" in capsys.readouterr().out


def test_launch_raises_with_the_tail_of_output(tmp_path):
    with pytest.raises(LaunchError) as err:
        launch("ddpm_lib.train", ["--config", "digitz", "--run-dir", str(tmp_path / "x")], nproc=2,
               env={"PYTHONPATH": str(ROOT)}, cwd=ROOT, echo=False)
    assert err.value.returncode != 0
    assert err.value.errors == ["error: unknown preset 'digitz' (did you mean 'digits'?); available: "
                                "animals10, base, digits, digits_quick, dtd_filtered, dtd_full, textures\n"]
    assert "unknown preset 'digitz'" in str(err.value) and len(err.value.tail) <= 40


def test_launch_interrupt_kills_every_rank(tmp_path):
    """A KeyboardInterrupt (the notebook's stop button) must not leave ranks behind."""
    marker = tmp_path / "interrupted"
    code = f"""
import signal, sys
from ddpm_lib.launch import launch
def stop(*a): raise KeyboardInterrupt
signal.signal(signal.SIGALRM, stop)
signal.alarm(8)
try:
    launch("ddpm_lib.train", ["--config", "digits", "--set", "train.max_steps=100000", "--run-dir", {str(marker)!r}],
           nproc=2, echo=False)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=90)
    assert "interrupted" in proc.stdout, proc.stderr[-2000:]
    time.sleep(1)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(marker) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


def test_launch_helpers():
    assert "--standalone" in torchrun_command("ddpm_lib.train", [], 2)
    multi = torchrun_command("ddpm_lib.train", [], 1, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400")
    assert "--rdzv-backend=c10d" in multi and "--node-rank=1" in multi and "--standalone" not in multi
    assert str(run_dir_of("ddpm_lib.train", ["--config", "textures"])) == "runs/textures"
    assert str(run_dir_of("ddpm_lib.sample", ["--run", "runs/x"])) == "runs/x"


def test_rendezvous_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(DDPMError, match=f"port {port} on 127.0.0.1 is already in use"):
            launch("ddpm_lib.train", [], nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_more_gpu_ranks_than_gpus(monkeypatch):
    with pytest.raises(DDPMError, match="no CUDA device"):
        setup("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DDPMError, match="local rank 1 has no GPU: this machine has 1 GPU"):
        setup("cuda")


def test_corrupt_snapshot_is_a_clear_error_and_is_kept(tmp_path):
    run = tmp_path / "corrupt"
    run.mkdir()
    (run / "snapshot.pt").write_bytes(b"PK\x03\x04 half a zip")
    proc = run_module("train", "--config", "digits", "--run-dir", str(run))
    assert_one_line_error(proc, "snapshot.pt is corrupt or truncated")
    assert (run / "snapshot.pt").read_bytes() == b"PK\x03\x04 half a zip"  # nothing deleted or overwritten
