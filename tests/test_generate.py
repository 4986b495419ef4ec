import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nano.config import get_preset
from nano.errors import NanoError
from nano.generate import Sampling, generate, sample
from nano.model import Transformer

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def model():
    return Transformer(TINY, rngs=nnx.Rngs(3))


def test_greedy_equals_rerunning_the_full_forward(model):
    prompt = [2, 17, 33, 5, 81]
    out = list(generate(model, prompt, max_new_tokens=12))
    full = nnx.jit(lambda m, t: m(t)[0])
    seq = list(prompt)
    for _ in range(12):  # no cache: recompute everything each step (zero-padded; causal, so harmless)
        padded = jnp.zeros((1, 32), jnp.int32).at[0, :len(seq)].set(jnp.asarray(seq))
        seq.append(int(jnp.argmax(full(model, padded)[0, len(seq) - 1])))
    assert out == seq[len(prompt):]


def test_stop_token_ends_generation(model):
    first = next(generate(model, [2, 9], max_new_tokens=1))
    assert list(generate(model, [2, 9], max_new_tokens=20, stop_ids=[first])) == [first]


def test_sampling_rules_exact():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    key = jax.random.key(0)
    assert int(sample(logits, key, Sampling())[0]) == 0
    assert int(sample(logits, key, Sampling(temperature=1.0, top_k=1))[0]) == 0
    assert int(sample(logits, key, Sampling(temperature=1.0, top_p=0.4))[0]) == 0  # 0.5 alone reaches 0.4
    keys = jax.random.split(key, 2000)
    draws = np.array([int(sample(logits, k, Sampling(temperature=1.0, top_k=2))[0]) for k in keys[:400]])
    assert set(draws) == {0, 1}
    nucleus = np.array(jax.vmap(lambda k: sample(logits, k, Sampling(temperature=1.0, top_p=0.8))[0])(keys))
    assert set(nucleus) == {0, 1}  # 0.5 + 0.3 reaches 0.8; tokens 2 and 3 are cut
    assert abs((nucleus == 0).mean() - 0.5 / 0.8) < 0.05  # renormalised


def test_sampled_generation_is_reproducible(model):
    s = Sampling(temperature=0.9, top_k=50, top_p=0.9, seed=7)
    assert list(generate(model, [2, 5], max_new_tokens=10, sampling=s)) == list(generate(model, [2, 5], max_new_tokens=10, sampling=s))


def test_bad_requests(model):
    with pytest.raises(NanoError, match="exceeds the model's context of 64 tokens"):
        list(generate(model, list(range(60)), max_new_tokens=10))
    with pytest.raises(NanoError, match="empty prompt"):
        list(generate(model, [], max_new_tokens=1))
    with pytest.raises(NanoError, match="top-p"):
        Sampling(top_p=1.5)
