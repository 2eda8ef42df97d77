"""Distributed training and sampling on CPU with 2 gloo ranks under torchrun.

Covers: a 2-rank run; bitwise-exact resume across an interruption; a SIGKILLed worker
brought back by --max-restarts; SIGTERM preemption; EMA sync; sampler sharding;
distributed sampling equal to single-process sampling; two torchrun "nodes" on
loopback; the launch helper; ranks ending with the process that launched them; and
the bad-input errors.
"""

import json
import os
import select
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
from ddpm_lib.launch import LaunchError, launch, parse_endpoint, port_in_use, run_dir_of, torchrun_command

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
    # signal rank 1 alone (a node preempted before the others): every rank stops at the same step
    for p in psutil.Process(proc.pid).children(recursive=True):
        if "ddpm_lib.train" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1":
            p.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "another rank received SIGTERM" in out  # rank 0 says why it stopped, not "stop_after"
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
                                "animals10, base, digits, digits_quick, dtd_filtered, dtd_full, learner, textures\n"]
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


def live_processes_with(marker, but: subprocess.Popen) -> list[psutil.Process]:
    """Processes (zombies and ``but`` excepted) whose command line contains ``marker``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if str(marker) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return [p for p in found if p.pid != but.pid]


def wait_until(condition, timeout, failure):
    """Poll ``condition`` every 0.1 s; AssertionError(failure()) if it is still false after ``timeout`` s."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(failure())
        time.sleep(0.1)


def gone(process: psutil.Process) -> bool:
    """Whether ``process`` has ended (a zombie waiting for its parent counts as ended)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_all(processes):
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guarantee holds on Linux")
def test_launch_ranks_die_with_the_launching_process(tmp_path):
    """A kernel that dies (restart, papermill timeout) takes torchrun and the training ranks with it."""
    run = tmp_path / "orphaned"  # in every rank's and the agent's command line
    args = train_args(run, 1_000_000, "--set", "train.epochs=100000", "--set", "train.device=cpu",
                      "--set", "train.log_every=100000", "--set", "train.snapshot_every=100000")[2:]
    code = f"from ddpm_lib.launch import launch\nlaunch('ddpm_lib.train', {args!r}, nproc=2, echo=False)"
    log = tmp_path / "launcher.log"
    with open(log, "w") as out:
        launcher = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stdout=out, stderr=out)
    def spawned():  # torchrun's agent and its ranks
        return live_processes_with(run, but=launcher)

    try:
        wait_until(lambda: len(spawned()) == 3 and (run / "config.yaml").exists() or launcher.poll() is not None,
                   120, lambda: "the ranks never started")
        assert launcher.poll() is None, log.read_text()[-2000:]
        launcher.send_signal(signal.SIGTERM)  # no Python cleanup runs: the default action ends it at once
        launcher.wait(timeout=10)
        wait_until(lambda: not spawned(), 20, lambda: f"still alive: {[p.info['cmdline'][:4] for p in spawned()]}")
    finally:
        launcher.kill()
        kill_all(spawned())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guarantee holds on Linux")
def test_launch_sigkilled_launcher_stops_any_module(tmp_path):
    """Even after SIGKILL, torchrun hears of its launcher's death and stops ranks that know nothing of ddpm_lib."""
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(300)\n")
    marker = f"sleeper-{tmp_path.name}"
    code = (f"from ddpm_lib.launch import launch\n"
            f"launch('sleeper', [{marker!r}], nproc=1, env={{'PYTHONPATH': {str(tmp_path)!r}}}, echo=False)")
    launcher = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    def spawned():  # torchrun's agent and its rank
        return live_processes_with(marker, but=launcher)

    try:
        wait_until(lambda: len(spawned()) == 2, 60, lambda: "torchrun never started its rank")
        launcher.kill()
        launcher.wait(timeout=10)
        wait_until(lambda: not spawned(), 20, lambda: f"still alive: {[p.info['cmdline'][:4] for p in spawned()]}")
    finally:
        launcher.kill()
        kill_all(spawned())


ORPHAN_RANK = """
import os, signal, sys, time
import ddpm_lib.dist as dist
dist.ORPHAN_POLL_S, dist.ORPHAN_GRACE_S = 0.1, 1.0
log = open(sys.argv[1], "a", buffering=1)
def on_sigterm(*_):  # says so, as the training loop does, but does not stop the process
    print("stopping", flush=True)
    log.write("SIGTERM\\n")
signal.signal(signal.SIGTERM, on_sigterm)
dist.setup("cpu")
log.write("ready\\n")
while True:
    time.sleep(0.1)
"""


@pytest.mark.skipif(os.name != "posix", reason="the rank watchdog runs on POSIX")
@pytest.mark.parametrize("who_dies", ["torchrun", "launcher"])
def test_orphaned_rank_stops_itself(tmp_path, who_dies):
    """A rank whose torchrun agent or launching process is gone gets SIGTERM, and exits even if it ignores it."""
    log = tmp_path / "rank.log"
    launcher = subprocess.Popen(["sleep", "300"])
    env = {**ENV, "TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "1", "DDPM_LAUNCHER_PID": str(launcher.pid)}
    agent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                              "print(subprocess.Popen(sys.argv[1:]).pid, flush=True)\ntime.sleep(300)",
                              sys.executable, "-c", ORPHAN_RANK, str(log)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    rank = psutil.Process(int(agent.stdout.readline()))
    try:
        wait_until(lambda: log.exists() and "ready" in log.read_text(), 60, lambda: "the rank never set up")
        victim = agent if who_dies == "torchrun" else launcher
        victim.kill()
        victim.wait()
        wait_until(lambda: gone(rank), 10,
                   lambda: f"the rank outlived {who_dies}; its log: {log.read_text()!r}")
        assert log.read_text() == "ready\nSIGTERM\n"  # asked to stop first, then ended by the grace timeout
    finally:
        for p in (agent, launcher):
            p.kill()
        kill_all([rank])


@pytest.mark.skipif(not hasattr(select, "poll"), reason="needs poll()")
def test_rank_stops_writing_to_a_pipe_nobody_reads(tmp_path):
    """When the launcher dies, torchrun (on Linux) SIGTERMs the ranks at once: a rank that then says it is
    stopping must not crash on the launcher's dead pipe before it has saved its snapshot."""
    log = tmp_path / "rank.log"
    launcher = subprocess.Popen(["sleep", "300"])
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)  # launch()'s end of the pipe
    env = {**ENV, "TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "1", "DDPM_LAUNCHER_PID": str(launcher.pid)}
    rank = subprocess.Popen([sys.executable, "-c", ORPHAN_RANK, str(log)], cwd=ROOT, env=env, stdout=reader.stdin)
    reader.stdin.close()
    try:
        wait_until(lambda: log.exists() and "ready" in log.read_text(), 60, lambda: "the rank never set up")
        reader.kill()
        reader.wait()
        time.sleep(1)  # the watchdog wakes as soon as the pipe loses its reader
        rank.send_signal(signal.SIGTERM)  # as torchrun does
        wait_until(lambda: "SIGTERM" in log.read_text() or rank.poll() is not None, 10, lambda: "no SIGTERM")
        assert log.read_text() == "ready\nSIGTERM\n" and rank.poll() is None  # its print went nowhere, no error
    finally:
        for p in (rank, launcher, reader):
            p.kill()


BAD_LAUNCH_ARGUMENTS = [
    ({"nproc": "abc"}, "nproc must be 'auto' or a whole number >= 1, got 'abc'"),
    ({"nproc": 0}, "nproc must be 'auto' or a whole number >= 1, got 0"),
    ({"nproc": -2}, "got -2"),
    ({"nproc": "1.5"}, "got '1.5'"),
    ({"nproc": 2.0}, "got 2.0"),
    ({"max_restarts": -1}, "max_restarts must be a whole number >= 0, got -1"),
    ({"nnodes": 0}, "nnodes must be a whole number >= 1, got 0"),
    ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "node0:29400"}, "node_rank=2 is out of range for nnodes=2"),
    ({"node_rank": -1}, "node_rank must be a whole number >= 0"),
    ({"nnodes": 2}, "nnodes=2 needs rdzv_endpoint='HOST:PORT'"),
    ({"nnodes": 2, "rdzv_endpoint": "127.0.0.1:http"}, "rdzv_endpoint must be HOST:PORT with a port in 1-65535"),
    ({"nnodes": 2, "node_rank": 1, "rdzv_endpoint": "node0:"}, "got 'node0:'"),
    ({"nnodes": 2, "node_rank": 1, "rdzv_endpoint": ":29400"}, "got ':29400'"),
    ({"nnodes": 2, "node_rank": 1, "rdzv_endpoint": "node0:70000"}, "got 'node0:70000'"),
    ({"tail": -1}, "tail must be a whole number >= 0"),
    ({"args": ["--config", "digits", "--run-dir"]}, "--run-dir has no value after it in args"),
    ({"args": ["--run", "--config", "digits"]}, "--run has no value after it in args"),
    ({"args": ["--config"]}, "--config has no value after it in args"),
]


@pytest.mark.parametrize("kwargs, message", BAD_LAUNCH_ARGUMENTS, ids=[str(k) for k, _ in BAD_LAUNCH_ARGUMENTS])
def test_launch_refuses_bad_arguments_before_starting(monkeypatch, kwargs, message):
    def refuse(*a, **k):
        raise AssertionError("torchrun was started")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    with pytest.raises(DDPMError) as err:
        launch("ddpm_lib.train", **{"nproc": 1, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_launch_reads_flags_and_endpoints_as_its_tools_do():
    assert str(run_dir_of("ddpm_lib.sample", ["--run-dir=runs/a"])) == "runs/a"
    assert str(run_dir_of("ddpm_lib.sample", ["--run", "runs/a", "--run-dir", "runs/b"])) == "runs/b"  # argparse: last
    assert str(run_dir_of("ddpm_lib.train", ["--config=textures"])) == "runs/textures"
    with pytest.raises(DDPMError, match="--run-dir has no value"):
        run_dir_of("ddpm_lib.sample", ["--run-dir"])
    assert parse_endpoint("node0") == ("node0", 29400)  # torchrun's default port
    assert parse_endpoint(" 10.0.0.1:1234 ") == ("10.0.0.1", 1234)
    assert parse_endpoint("[::1]") == ("[::1]", 29400) and parse_endpoint("[::1]:5") == ("[::1]", 5)


def test_resume_with_another_world_size_completes_the_planned_epochs(tmp_path):
    # 1 epoch of 1797 digits in batches of 64: 28 steps on 1 rank. Stopped at step 10 and resumed on
    # 2 ranks, each rank skips 10 x 64 / 2 of its shard, and the 898 - 320 left make 9 steps of 2 x 64.
    run = tmp_path / "grown"
    args = ["-m", "ddpm_lib.train", "--config", "digits", *SETS, "--set", "train.batch_size=64",
            "--set", "train.epochs=1", "--run-dir", str(run)]
    first = subprocess.run([sys.executable, *args, "--stop-after", "10"], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=240)
    assert first.returncode == 0 and "stopped at step 10 of 28" in first.stdout, first.stdout + first.stderr
    proc = torchrun(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "written by 1 rank(s), this run has 2" in proc.stdout and "done: 19 steps" in proc.stdout, proc.stdout
    assert final_weights(run)["state"]["step"] == 19
    assert 10 * 64 + (19 - 10) * 2 * 64 == 28 * 64  # the planned images, all of them


def test_default_threads_leaves_out_cores_other_programs_keep_busy(monkeypatch):
    """One rank takes every core but those busy with other work (from 75% use); several share the cores."""
    from ddpm_lib import dist as ddist

    monkeypatch.setattr(ddist.os, "cpu_count", lambda: 8)
    assert ddist.default_threads(1, busy=0.0) == 8
    assert ddist.default_threads(1, busy=0.7) == 8
    assert ddist.default_threads(1, busy=0.8) == 7
    assert ddist.default_threads(1, busy=2.9) == 5
    assert ddist.default_threads(1, busy=20.0) == 1
    assert ddist.default_threads(4, busy=8.0) == 2  # ranks started together would count each other: not measured


def test_busy_cores_sees_a_spinning_process():
    from conftest import REAL_BUSY_CORES as busy_cores  # the fixture makes ddpm_lib.dist.busy_cores report idle

    if not os.path.exists("/proc/stat"):
        pytest.skip("busy_cores reads /proc/stat (Linux)")
    quiet = busy_cores(0.5)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        loaded = busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert loaded > quiet + 0.5 and loaded > 0.7, (quiet, loaded)
