"""The CLI end to end on a tiny checkpoint and tiny prepared text."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from nano.cli import app

runner = CliRunner()


def test_presets_lists_every_preset():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0
    for name in ("nano1", "nano2", "gemma3_270m", "tiny"):
        assert name in result.output


def test_eval_reports_table_and_json(tiny_ckpt, tiny_data, tmp_path):
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(tiny_ckpt), "--data", str(tiny_data), "--window", "32",
                                 "--windows", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["windows"] == 3 and report["scored_tokens"] == 3 * 31
    assert report["perplexity"] == pytest.approx(np.exp(report["mean_nll"]))
    assert "perplexity" in result.output


def test_generate_streams_text(tiny_ckpt):
    result = runner.invoke(app, ["generate", str(tiny_ckpt), "--prompt", "the cat", "--max-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("the cat")


@pytest.mark.parametrize("args,message", [
    (["eval", "/nonexistent/ckpt"], "not a Nano checkpoint"),
    (["generate", "/nonexistent/ckpt", "--prompt", "x"], "not a Nano checkpoint"),
    (["generate", "/nonexistent/m.litertlm", "--prompt", "x"], "no such .litertlm file"),
    (["convert", "/nonexistent.gguf", "--out", "/tmp/never"], "not found"),
    (["data", "prepare", "--tokenizer", "/nonexistent/ckpt"], "not a Nano checkpoint"),
])
def test_errors_are_one_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output


def test_eval_refuses_data_from_another_tokenizer(tiny_ckpt, tiny_data, tmp_path, tiny_tokenizer):
    import shutil

    from tests.conftest import make_tiny_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_ckpt, other)
    make_tiny_tokenizer(vocab_size=500).save(other / "tokenizer.model")
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer_sha256"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["eval", str(other), "--data", str(tiny_data)])
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and result.output.startswith("error: "), result.output
    assert f"was tokenized with tokenizer {tiny_tokenizer.sha256} but the model uses {'0' * 64}" in message, message


def test_prepare_writes_into_the_nano_cache_by_default(tiny_ckpt, tiny_tokenizer, tmp_path, nano_cache):
    """Without --out the preparation goes to $NANO_CACHE/data/default-<tokenizer>: here this test's
    own temporary cache (conftest), never the user's."""
    for split in ("train", "held"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "doc.txt").write_text(" ".join(f"the {split} rat ate oat {i} at noon." for i in range(30)))
    result = runner.invoke(app, ["data", "prepare", "--tokenizer", str(tiny_ckpt), "--train", f"folder:{tmp_path / 'train'}",
                                 "--heldout", f"folder:{tmp_path / 'held'}"])
    assert result.exit_code == 0, result.output
    out = nano_cache / "data" / f"default-{tiny_tokenizer.sha256[:12]}"
    assert "wrote" in result.output and str(out) in "".join(result.output.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == tiny_tokenizer.sha256 and manifest["splits"]["train"]["documents"] == 1
