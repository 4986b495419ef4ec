"""`nano distill` end to end on tiny models: SIGKILL mid-run, `--resume`, identical curve."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from flax import nnx
from typer.testing import CliRunner

from nano.checkpoint import load_checkpoint, save_checkpoint
from nano.cli import app
from nano.config import get_preset
from nano.model import Transformer
from tests.conftest import prepare_tiny_text

STEPS = 20  # optimizer steps of the tiny run (checkpoints every 2): the kill after 4 has 16 steps of margin


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("distill")
    teacher = save_checkpoint(root / "teacher", Transformer(get_preset("tiny"), rngs=nnx.Rngs(5)), tokenizer=tiny_tokenizer)
    data = prepare_tiny_text(root / "text", teacher, docs=6, sentences=40)
    config = root / "run.json"
    config.write_text(json.dumps({"student": "tiny", "seq_len": 32, "batch_size": 4, "tokens": 4 * 32 * STEPS,
                                  "checkpoint_every": 2, "eval_every": 4, "eval_windows": 2, "eval_window": 64}))
    return root, teacher, data, config


def _cmd(teacher, data, config, out, *extra):
    return [sys.executable, "-m", "nano.cli", "distill", "--teacher", str(teacher), "--data", str(data),
            "--config", str(config), "--out", str(out), *extra]


def _curve(out):
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_sigkill_then_resume_gives_the_uninterrupted_curve(setup):
    root, teacher, data, config = setup
    full = subprocess.run(_cmd(teacher, data, config, root / "full"), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    student = load_checkpoint(root / "full" / "student")
    assert student.config.name == "tiny" and (root / "full" / "student" / "tokenizer.model").is_file()

    proc = subprocess.Popen(_cmd(teacher, data, config, root / "cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = root / "cut" / "checkpoints"

    def saved() -> list[int]:  # steps of the finished checkpoints
        return [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.is_dir() else []

    deadline = time.time() + 300
    while time.time() < deadline and max(saved(), default=0) < 4:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The kill interrupted training: after checkpoint 4, before the last step and the student.
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    assert 4 <= max(saved()) < STEPS, saved()
    assert not (root / "cut" / "student").exists()
    again = subprocess.run(_cmd(teacher, data, config, root / "cut"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "pass --resume" in again.stderr
    changed = subprocess.run(_cmd(teacher, data, config, root / "cut", "--resume", "--freeze-embed"),
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 1 and "fields ['freeze_embed']" in changed.stderr, changed.stderr[-3000:]
    cfg_file = root / "cut" / "train_config.json"  # a run started before a field existed resumes at its default
    cfg_file.write_text(json.dumps({k: v for k, v in json.loads(cfg_file.read_text()).items() if k != "freeze_embed"}))
    resumed = subprocess.run(_cmd(teacher, data, config, root / "cut", "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max(saved()) == STEPS and load_checkpoint(root / "cut" / "student").config.name == "tiny"
    assert _curve(root / "cut") == _curve(root / "full")


def test_bad_inputs_fail_before_compute(setup, tmp_path):
    root, teacher, data, config = setup
    runner = CliRunner()
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"studnet": "tiny"}))
    cases = [
        (["--config", str(typo)], "unknown field(s) ['studnet']"),
        (["--config", str(config), "--student", "student_20m"], "vocabulary"),
        (["--config", str(config), "--data", str(tmp_path / "nothing")], "manifest.json: missing; run `nano data prepare"),
        (["--config", str(config), "--loss", "kl"], "loss 'kl'"),
        (["--config", str(config), "--batch-size", "4096"], "fewer than one batch of 4096"),
    ]
    for extra, message in cases:
        args = ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(tmp_path / "o"), *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (extra, result.output)
        assert message in " ".join(result.output.split()), (extra, result.output)


def test_offline_cache_then_distill_from_it(setup, tmp_path):
    root, teacher, data, config = setup
    runner = CliRunner()
    cache = tmp_path / "cache"
    built = runner.invoke(app, ["distill", "cache-teacher", "--teacher", str(teacher), "--data", str(data),
                                "--out", str(cache), "--seq-len", "32", "--k", "16", "--batch-size", "4"])
    assert built.exit_code == 0, built.output
    assert "bytes/token" in built.output
    base = ["distill", "--teacher", str(cache), "--config", str(config)]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    assert len(losses) == STEPS and all(l == l for l in losses)  # finite, no NaN
    wrong_len = runner.invoke(app, [*base, "--seq-len", "64", "--out", str(tmp_path / "r2")])
    assert wrong_len.exit_code == 1 and "--seq-len" in wrong_len.output
    shard = sorted(cache.glob("shard-*"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    corrupt = runner.invoke(app, [*base, "--out", str(tmp_path / "r3")])
    assert corrupt.exit_code == 1 and shard.name in corrupt.output and "corrupt" in corrupt.output
    assert not (tmp_path / "r3" / "train_config.json").exists()  # refused before any training
