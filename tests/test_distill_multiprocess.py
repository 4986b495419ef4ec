"""`nano distill` over several processes on JAX's runtime (2 processes x 4 forced CPU devices, gloo
collectives): the 1 x 8 curve, SIGKILL + `--resume` bit for bit, and the refusals."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from distill.distributed import initialize
from distill.train import check_process_split
from nano.checkpoint import flat_params, load_checkpoint, save_checkpoint
from nano.cli import app
from nano.config import get_preset
from nano.errors import NanoError
from nano.model import Transformer
from tests.conftest import prepare_tiny_text

STEPS = 4  # checkpoints every 2: a kill after the first leaves 2 steps, a checkpoint and the student of margin


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("mproc")
    teacher = save_checkpoint(root / "teacher", Transformer(get_preset("tiny"), rngs=nnx.Rngs(5)), tokenizer=tiny_tokenizer)
    data = prepare_tiny_text(root / "text", teacher, docs=6, sentences=40)
    config = root / "run.json"  # the default 1 x 8 mesh: parameters split across both processes
    config.write_text(json.dumps({"student": "tiny", "seq_len": 32, "batch_size": 8, "tokens": 8 * 32 * STEPS,
                                  "onpolicy": 0.5, "checkpoint_every": 2, "eval_every": STEPS, "eval_windows": 1,
                                  "eval_window": 64}))
    return root, teacher, data, config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(setup, out, processes: int, *extra) -> list[subprocess.Popen]:
    """`processes` CLI processes sharing 8 forced host devices equally; output in out.log<i>."""
    root, teacher, data, config = setup
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}")
    cmd = [sys.executable, "-m", "nano.cli", "distill", "--teacher", str(teacher), "--data", str(data),
           "--config", str(config), "--out", str(out), "--num-processes", str(processes), *extra]
    if processes > 1:
        cmd += ["--coordinator", f"127.0.0.1:{_free_port()}"]
    procs = []
    for i in range(processes):
        with open(f"{out}.log{i}", "w") as log:
            procs.append(subprocess.Popen(cmd + ["--process-id", str(i)], env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _finish(procs, out) -> None:
    """Wait for `procs` (killed if they outlive the wait); every one must succeed."""
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL: JAX's distributed runtime catches SIGTERM
                p.wait()
    texts = [open(f"{out}.log{i}").read()[-3000:] for i in range(len(procs))]
    assert all(p.returncode == 0 for p in procs), texts


def _records(out) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"}  # speed: the one field that varies
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def two_process_run(setup):
    out = setup[0] / "two"
    _finish(_start(setup, out, 2), out)
    return out


def test_two_processes_give_the_one_process_curve(setup, two_process_run):
    one = setup[0] / "one"
    _finish(_start(setup, one, 1), one)
    two = _records(two_process_run)
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))  # process 0 alone wrote the metrics
    assert {r["onpolicy"] for r in two} == {True, False}
    for key in ("loss", "grad_norm", "heldout_ppl"):
        got, want = [[r[key] for r in rs if key in r] for rs in (two, _records(one))]
        assert len(got) == len(want) > 0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=key)
    assert json.loads((two_process_run / "run.json").read_text()) == {"processes": 2, "devices": 8}
    assert json.loads((one / "run.json").read_text()) == {"processes": 1, "devices": 8}
    # the student gathered from both processes' devices
    a, b = (flat_params(load_checkpoint(d / "student")) for d in (two_process_run, one))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert (two_process_run / "tensorboard").is_dir()


def test_sigkill_one_process_then_resume_continues_bit_for_bit(setup, two_process_run, monkeypatch):
    out = setup[0] / "cut"
    procs = _start(setup, out, 2)
    checkpoints = out / "checkpoints"

    def saved() -> list[int]:  # steps of the finished checkpoints
        return [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.is_dir() else []

    deadline = time.time() + 600
    while time.time() < deadline and not saved() and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    procs[0].send_signal(signal.SIGKILL)  # the survivor could only wait for its peer now
    procs[0].wait()
    assert procs[1].returncode == -signal.SIGKILL, open(f"{out}.log1").read()[-3000:]
    assert 2 <= max(saved(), default=0) < STEPS, saved()
    assert not (out / "student").exists()

    _, teacher, data, config = setup  # this process: one process with its own devices
    monkeypatch.setattr("distill.distributed._detected_process_count", lambda: 1)  # whatever cluster runs the tests
    one = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--data", str(data), "--config", str(config),
                                   "--out", str(out), "--resume"])
    assert one.exit_code == 1, one.output
    assert re.search(r"run\.json: the run started on 2 process\(es\) with 8 devices, this --resume has 1 with \d+; "
                     r"resume with the same --num-processes", " ".join(one.output.split())), one.output

    _finish(_start(setup, out, 2, "--resume"), out)
    assert _records(out) == _records(two_process_run)
    assert max(saved()) == STEPS and load_checkpoint(out / "student").config.name == "tiny"


def test_refusals_name_the_flag_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr("distill.distributed._detected_process_count", lambda: 1)  # whatever cluster runs the tests
    port = _free_port()  # closed again: nobody listens there
    with pytest.raises(NanoError, match=rf"--coordinator 127.0.0.1:{port}: no answer within the timeout"):
        initialize(f"127.0.0.1:{port}", 2, 1, timeout_s=0.5)
    with pytest.raises(NanoError, match="missing --coordinator, --process-id; give"):
        initialize(None, 2, None, timeout_s=1)
    with pytest.raises(NanoError, match=r"--process-id 2 must lie in 0..1"):
        initialize("127.0.0.1:1", 2, 2, timeout_s=1)
    with pytest.raises(NanoError, match="--coordinator 'localhost': give HOST:PORT"):
        initialize("localhost", 2, 0, timeout_s=1)
    assert initialize(None, None, None, timeout_s=1) is False and initialize(None, 1, None, timeout_s=1) is False
    with pytest.raises(NanoError, match=r"batch_size 8 does not split over 3 processes \(--num-processes\); use a multiple of 3"):
        check_process_split(8, 3)
    check_process_split(8, 2)
    # the CLI reads the flags from the environment too and prints the one line
    env = {"NANO_COORDINATOR": f"127.0.0.1:{port}", "NANO_NUM_PROCESSES": "2", "NANO_PROCESS_ID": "1",
           "NANO_COORDINATOR_TIMEOUT": "0.5"}
    result = CliRunner().invoke(app, ["distill", "--teacher", "none", "--out", str(tmp_path / "o")], env=env)
    assert result.exit_code == 1 and f"--coordinator 127.0.0.1:{port}: no answer" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()
