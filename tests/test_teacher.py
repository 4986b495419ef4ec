"""The real teacher (packaged Gemma 3 270M) against llama.cpp on real held-out text."""

import llama_cpp  # noqa: F401  pinned (requirements.txt): a missing wheel fails here instead of skipping
import numpy as np
import pytest

from nano.checkpoint import load_checkpoint, load_config
from nano.data.shards import TokenSplit, eval_windows
from nano.eval import evaluate, window_nll
from nano.generate import generate
from tests.conftest import kl_per_position

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(teacher_ckpt):
    return load_checkpoint(teacher_ckpt)


@pytest.fixture(scope="module")
def heldout(prepared_data, teacher_tokenizer):
    split = TokenSplit.open(prepared_data, "heldout")
    split.check_tokenizer(teacher_tokenizer.sha256)
    return eval_windows(split.tokens, window=512, bos_id=teacher_tokenizer.bos_id, max_windows=4)


def test_imported_config_is_the_preset(teacher_ckpt):
    assert load_config(teacher_ckpt).name == "gemma3_270m"


def test_logits_match_llama_cpp_f32(teacher, teacher_f32_gguf, heldout):
    """Mean KL(llama.cpp || ours) <= 1e-5 over >= 1,000 held-out tokens (F32 GGUF of our weights)."""
    from benchmarks.harness.llamacpp import LlamaCpp

    ref = LlamaCpp(teacher_f32_gguf, window=512)
    kl = np.concatenate([kl_per_position(ref.logits(window), np.asarray(teacher(window[None])[0][0]))
                         for window in heldout[:2]])
    assert kl.size >= 1000
    # Measured 3.3e-7 here (largest single position 7.4e-6; 1.1e-6 on another machine). Near misses
    # land far above the bound (one window): norm epsilon 1e-5 instead of 1e-6 gives 2.4e-2, twice
    # the local RoPE base 1.1e-2, twice the global one 1.7e-3.
    assert kl.mean() <= 1e-5, kl.mean()


def test_greedy_continuation_matches_llama_cpp(teacher, teacher_f32_gguf, teacher_tokenizer):
    from benchmarks.harness.llamacpp import LlamaCpp

    prompt = teacher_tokenizer.encode("SQLite is a C-language library that", add_bos=True)
    ours = list(generate(teacher, prompt, max_new_tokens=32))
    theirs = LlamaCpp(teacher_f32_gguf, window=128).greedy(prompt, 32)
    assert ours == theirs, (teacher_tokenizer.decode(ours), teacher_tokenizer.decode(theirs))


def test_perplexity_within_2pct_of_llama_cpp(teacher, teacher_gguf, heldout):
    """`nano eval`'s scoring vs llama.cpp on the original Q4_K_M file, same windows and tokens."""
    from benchmarks.harness.llamacpp import LlamaCpp

    ours = evaluate(teacher, heldout)
    theirs = LlamaCpp(teacher_gguf, window=512).perplexity(heldout)
    assert ours.scored_tokens == heldout.shape[0] * 511
    assert abs(ours.perplexity / theirs - 1) <= 0.02, (ours.perplexity, theirs)
    # and our chunked scorer equals a plain softmax over the full logits
    logits = np.asarray(teacher(heldout[:1])[0][0, :-1], dtype=np.float64)
    logits -= logits.max(-1, keepdims=True)
    plain = np.log(np.exp(logits).sum(-1)) - logits[np.arange(511), heldout[0, 1:]]
    np.testing.assert_allclose(np.asarray(window_nll(teacher, heldout[:1]))[0], plain, atol=1e-4)
