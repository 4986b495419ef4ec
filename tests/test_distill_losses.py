"""distill.losses: exact values against independent NumPy formulas, chunking invariance of values
and gradients on the tiny preset, divergence properties, peak memory, argument checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill.losses import DenseTargets, SparseTargets, distill_loss
from nano.config import get_preset
from nano.errors import NanoError
from nano.model import Transformer, abstract_model

IDENTITY = lambda h: h  # noqa: E731  "hidden states" are the logits themselves in the hand-made tests


# ---- independent NumPy references (probability space, float64) ----

def softmax(x, tau=1.0):
    e = np.exp((x - x.max(-1, keepdims=True)) / tau)
    return e / e.sum(-1, keepdims=True)


def kl(p, q):
    return np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0), -1)


def divergence(kind, P, Q, beta):
    """P teacher, Q student; GKD/TRL: JSD_b = b KL(P||M) + (1-b) KL(Q||M), M = b P + (1-b) Q."""
    if kind == "forward_kl":
        return kl(P, Q)
    if kind == "reverse_kl":
        return kl(Q, P)
    M = beta * P + (1 - beta) * Q
    return beta * kl(P, M) + (1 - beta) * kl(Q, M)


def masked_mean(x, mask):
    mask = np.ones(x.shape) if mask is None else np.asarray(mask, np.float64)
    return (x * mask).sum() / mask.sum()


def ce(zs, labels):
    p = softmax(zs)
    return -np.log(np.take_along_axis(p, labels[..., None], -1)[..., 0])


def run(zs, labels, targets, **kw):
    loss, metrics = distill_loss(IDENTITY, jnp.asarray(zs, jnp.float32), jnp.asarray(labels), targets, **kw)
    return float(loss), {k: float(v) for k, v in metrics.items()}


@pytest.fixture(scope="module")
def small():
    """B=2, T=3, V=4 student/teacher logits, labels, and a mask that drops one position."""
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(2, 3, 4)) * 2, rng.normal(size=(2, 3, 4)) * 2
    labels = rng.integers(0, 4, size=(2, 3))
    mask = np.array([[True, True, False], [True, True, True]])
    return zs, zt, labels, mask


# ---- exact values ----

def test_forward_kl_hand_value():
    """Uniform student, teacher (0.7, 0.1, 0.1, 0.1): KL = sum p log(4 p)."""
    p = np.array([0.7, 0.1, 0.1, 0.1])
    loss, m = run(np.zeros((1, 1, 4)), np.zeros((1, 1), int),
                  DenseTargets(jnp.log(jnp.asarray(p, jnp.float32))[None, None], IDENTITY))
    want = 0.7 * np.log(2.8) + 3 * 0.1 * np.log(0.4)
    assert loss == pytest.approx(want, abs=1e-6) and m["kl"] == pytest.approx(want, abs=1e-6)
    assert m["ce"] == pytest.approx(np.log(4), abs=1e-6)


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2)])
@pytest.mark.parametrize("tau,alpha", [(1.0, 0.0), (2.0, 0.3)])
def test_dense_values(small, kind, beta, tau, alpha):
    zs, zt, labels, mask = small
    loss, m = run(zs, labels, DenseTargets(jnp.asarray(zt, jnp.float32), IDENTITY), kind=kind,
                  temperature=tau, beta=beta, alpha=alpha, mask=jnp.asarray(mask), chunk=2)
    d = masked_mean(divergence(kind, softmax(zt, tau), softmax(zs, tau), beta) * tau ** 2, mask)
    c = masked_mean(ce(zs, labels), mask)
    P, Q = softmax(zt), softmax(zs)
    assert m["distill"] == pytest.approx(d, rel=1e-5, abs=1e-6)
    assert loss == pytest.approx((1 - alpha) * d + alpha * c, rel=1e-5, abs=1e-6)
    assert m["ce"] == pytest.approx(c, rel=1e-5)
    assert m["kl"] == pytest.approx(masked_mean(kl(P, Q), mask), rel=1e-5, abs=1e-6)
    assert m["teacher_ce"] == pytest.approx(masked_mean(-(P * np.log(Q)).sum(-1), mask), rel=1e-5)
    assert m["agreement"] == pytest.approx(masked_mean(zs.argmax(-1) == zt.argmax(-1), mask))


def test_jsd_edges_are_trl_forward_and_reverse_kl(small):
    zs, zt, labels, _ = small
    t = DenseTargets(jnp.asarray(zt, jnp.float32), IDENTITY)
    for beta, same in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        want = run(zs, labels, t, kind=same, temperature=1.5)[0]
        assert run(zs, labels, t, kind="jsd", beta=beta, temperature=1.5)[0] == pytest.approx(want, rel=1e-6)
        # the formula itself vanishes at the edges: TRL special-cases them
        near = run(zs, labels, t, kind="jsd", beta=abs(beta - 1e-3), temperature=1.5)[0]
        assert near == pytest.approx(1e-3 * want, rel=0.05)


def test_float_mask_weights_positions(small):
    zs, zt, labels, _ = small
    w = np.array([[0.5, 1.0, 0.0], [2.0, 0.25, 1.0]])
    loss, _ = run(zs, labels, DenseTargets(jnp.asarray(zt, jnp.float32), IDENTITY), mask=jnp.asarray(w))
    assert loss == pytest.approx(masked_mean(kl(softmax(zt), softmax(zs)), w), rel=1e-5)


def _topk(zt, k):
    ids = np.argsort(-zt, -1)[..., :k]
    logprobs = np.log(np.take_along_axis(softmax(zt), ids, -1))
    return ids, logprobs


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_sparse_topk_values(small, kind, tau):
    zs, zt, labels, mask = small
    ids, logprobs = _topk(zt, 2)
    loss, m = run(zs, labels, SparseTargets(jnp.asarray(ids), jnp.asarray(logprobs, jnp.float32)),
                  kind=kind, temperature=tau, beta=0.3, alpha=0.25, mask=jnp.asarray(mask))
    p = np.exp(logprobs) ** (1 / tau)
    q = p / p.sum(-1, keepdims=True)  # teacher restricted to the top-k and renormalised
    s_full = np.take_along_axis(softmax(zs, tau), ids, -1)  # full-softmax student on the ids
    if kind == "forward_kl":
        d = (q * np.log(q / s_full)).sum(-1)  # exact KL(q || student): q is 0 elsewhere
    else:
        s = s_full / s_full.sum(-1, keepdims=True)  # student renormalised on the support
        d = divergence(kind, q, s, 0.3)
    d = masked_mean(d * tau ** 2, mask)
    c = masked_mean(ce(zs, labels), mask)
    assert loss == pytest.approx(0.75 * d + 0.25 * c, rel=1e-5, abs=1e-6)
    q1 = np.exp(logprobs) / np.exp(logprobs).sum(-1, keepdims=True)
    s1 = np.take_along_axis(softmax(zs), ids, -1)
    assert m["kl"] == pytest.approx(masked_mean((q1 * np.log(q1 / s1)).sum(-1), mask), rel=1e-5)
    assert m["agreement"] == pytest.approx(masked_mean(zs.argmax(-1) == zt.argmax(-1), mask))


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_sparse_sampled_values(small, tau):
    """Counts/k weights with padding (weight 0, id 0); tempered by w * p**(1/tau - 1)."""
    zs, zt, labels, _ = small
    rng = np.random.default_rng(1)
    k = 4
    P = softmax(zt)
    ids, w = np.zeros((2, 3, k), np.int32), np.zeros((2, 3, k))
    for b in range(2):
        for t in range(3):
            u, counts = np.unique(rng.choice(4, size=k, p=P[b, t]), return_counts=True)
            ids[b, t, :len(u)], w[b, t, :len(u)] = u, counts / k
    lp = np.log(np.take_along_axis(P, ids, -1))
    loss, m = run(zs, labels, SparseTargets(jnp.asarray(ids), jnp.asarray(lp, jnp.float32),
                                            jnp.asarray(w, jnp.float32)), temperature=tau)
    want = []
    for b in range(2):
        for t in range(3):
            keep = w[b, t] > 0
            q = w[b, t, keep] * P[b, t, ids[b, t, keep]] ** (1 / tau - 1)
            q /= q.sum()
            s = softmax(zs[b, t], tau)[ids[b, t, keep]]
            want.append((q * np.log(q / s)).sum() * tau ** 2)
    assert loss == pytest.approx(np.mean(want), rel=1e-5)
    if tau == 1.0:  # the target is the empirical sample distribution itself
        assert m["kl"] == pytest.approx(loss, rel=1e-6)


def test_sparse_with_full_support_equals_dense(small):
    zs, zt, labels, _ = small
    ids, logprobs = _topk(zt, 4)
    sparse = SparseTargets(jnp.asarray(ids), jnp.asarray(logprobs, jnp.float32))
    dense = DenseTargets(jnp.asarray(zt, jnp.float32), IDENTITY)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        a = run(zs, labels, sparse, kind=kind, temperature=1.5)[1]
        b = run(zs, labels, dense, kind=kind, temperature=1.5)[1]
        for key in ("loss", "kl", "teacher_ce", "ce", "agreement"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (kind, key)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_sparse_padding_and_topk_weights(small, kind):
    """A padded slot (id 0, logprob -1e30 or -inf, or weight 0) changes nothing, and top-k passed
    with weights = renormalised probabilities is the top-k target (also when tempered)."""
    zs, zt, labels, _ = small
    ids, lp = _topk(zt, 2)
    want = run(zs, labels, SparseTargets(jnp.asarray(ids), jnp.asarray(lp, jnp.float32)),
               kind=kind, temperature=2.0)[0]
    pad_ids = np.concatenate([ids, np.zeros((2, 3, 1), int)], -1)
    q = np.exp(lp) / np.exp(lp).sum(-1, keepdims=True)
    for pad_lp in (-1e30, -np.inf):
        padded = np.concatenate([lp, np.full((2, 3, 1), pad_lp)], -1)
        t = SparseTargets(jnp.asarray(pad_ids), jnp.asarray(padded, jnp.float32))
        assert run(zs, labels, t, kind=kind, temperature=2.0)[0] == pytest.approx(want, rel=1e-6)
    weights = np.concatenate([q, np.zeros((2, 3, 1))], -1)
    padded = np.concatenate([lp, np.full((2, 3, 1), -3.0)], -1)  # a real-looking logprob, weight 0
    t = SparseTargets(jnp.asarray(pad_ids), jnp.asarray(padded, jnp.float32), jnp.asarray(weights, jnp.float32))
    assert run(zs, labels, t, kind=kind, temperature=2.0)[0] == pytest.approx(want, rel=1e-5)


# ---- the tiny preset: chunking invariance, properties ----

@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    student, teacher = Transformer(cfg, rngs=nnx.Rngs(0)), Transformer(cfg, rngs=nnx.Rngs(1))
    B, T = 2, 13  # T not a multiple of the chunk (4)
    tokens = jax.random.randint(jax.random.key(0), (B, T + 1), 0, cfg.vocab_size)
    hidden = jax.jit(lambda tokens: (student.hidden(tokens)[0], teacher.hidden(tokens)[0]))
    h_s, h_t = hidden(tokens[:, :-1])  # jitted: eager dispatch of 6 layers is slow
    zt = np.asarray(teacher.logits(h_t), np.float64)
    ids, logprobs = _topk(zt, 8)
    mask = jnp.ones((B, T), bool).at[1, -3:].set(False)
    sparse = SparseTargets(jnp.asarray(ids, jnp.int32), jnp.asarray(logprobs, jnp.float32))
    return dict(student=student, teacher=teacher, h_s=h_s, h_t=h_t, labels=tokens[:, 1:],
                mask=mask, sparse=sparse)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
def test_chunked_equals_unchunked_values_and_grads(tiny, dense):
    graphdef, state = nnx.split(tiny["student"])
    teacher = tiny["teacher"]

    def grads(chunk, kind):  # chunk and kind are static: one compile per pair
        def loss(state, h_s):
            student = nnx.merge(graphdef, state)
            targets = DenseTargets(tiny["h_t"], teacher.logits) if dense else tiny["sparse"]
            return distill_loss(student.logits, h_s, tiny["labels"], targets, kind=kind,
                                temperature=2.0, beta=0.3, alpha=0.2, mask=tiny["mask"], chunk=chunk)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(state, tiny["h_s"])

    T = tiny["h_s"].shape[1]
    for kind in ("forward_kl", "jsd"):
        (_, m4), g4 = grads(4, kind)
        (_, mT), gT = grads(T, kind)
        for k in m4:
            assert abs(float(m4[k]) - float(mT[k])) <= 1e-5, (kind, k)
        diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g4, gT)
        assert max(jax.tree.leaves(diff)) <= 1e-5, (kind, diff)
        assert float(jnp.max(jnp.abs(g4[1]))) > 0  # the gradient is not trivially zero


def test_self_kl_is_zero_and_jsd_symmetric(tiny):
    s, t, h_s, h_t, labels = tiny["student"], tiny["teacher"], tiny["h_s"], tiny["h_t"], tiny["labels"]
    _, m = distill_loss(s.logits, h_s, labels, DenseTargets(h_s, s.logits), chunk=4)
    assert abs(float(m["distill"])) < 1e-6 and abs(float(m["kl"])) < 1e-6 and float(m["agreement"]) == 1.0
    ab = distill_loss(s.logits, h_s, labels, DenseTargets(h_t, t.logits), kind="jsd", beta=0.5, chunk=4)[1]
    ba = distill_loss(t.logits, h_t, labels, DenseTargets(h_s, s.logits), kind="jsd", beta=0.5, chunk=4)[1]
    assert float(ab["distill"]) == pytest.approx(float(ba["distill"]), rel=1e-5)
    assert float(ab["distill"]) > 0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_losses_nonnegative(tiny, kind):
    s, t = tiny["student"], tiny["teacher"]
    for targets in (DenseTargets(tiny["h_t"], t.logits), tiny["sparse"]):
        _, m = distill_loss(s.logits, tiny["h_s"], tiny["labels"], targets, kind=kind,
                            temperature=1.7, chunk=5)
        assert all(float(m[k]) >= 0 for k in ("loss", "distill", "kl", "ce", "teacher_ce")), m


def test_all_masked_gives_zero_not_nan(small):
    zs, zt, labels, _ = small
    loss, m = run(zs, labels, DenseTargets(jnp.asarray(zt, jnp.float32), IDENTITY), mask=jnp.zeros((2, 3)))
    assert loss == 0.0 and all(np.isfinite(v) for v in m.values())


def test_jit_traced_schedule_and_padded_positions(small):
    """SparseTargets is a pytree; temperature/alpha may be traced; an all-padding position
    (every weight 0) that is masked out leaves value and gradient finite."""
    zs, zt, labels, _ = small
    ids, lp = (jnp.asarray(x) for x in _topk(zt, 2))
    w = jnp.full(ids.shape, 0.5).at[0, 2].set(0.0)
    mask = jnp.ones((2, 3), bool).at[0, 2].set(False)

    @jax.jit
    def f(zs, targets, tau, alpha):
        def loss(zs):
            return distill_loss(IDENTITY, zs, jnp.asarray(labels), targets, kind="jsd",
                                temperature=tau, alpha=alpha, mask=mask)[0]
        return jax.value_and_grad(loss)(zs)

    zs = jnp.asarray(zs, jnp.float32)
    value, grad = f(zs, SparseTargets(ids, lp, w.astype(jnp.float32)), 2.0, 0.1)
    eager = run(zs, labels, SparseTargets(ids, lp, w.astype(jnp.float32)), kind="jsd",
                temperature=2.0, alpha=0.1, mask=mask)[0]
    assert float(value) == pytest.approx(eager, rel=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad[0, 2]).max()) == 0.0


# ---- memory ----

def test_peak_memory_is_per_chunk():
    """Gradient of the dense loss with a 65,536-token vocabulary: XLA's temp buffers stay O(chunk * V).

    A (B, c, V) buffer is c/T of B*T*V; the backward pass needs a few of them (student and teacher
    logits, their gradient, and on CPU some unfused intermediates), so T = 2048 makes a 1/4 bound
    meaningful for chunk 64, and T = 512 must need (almost) the same temp memory."""
    cfg = dataclasses.replace(get_preset("tiny"), vocab_size=65_536)
    graphdef, state = nnx.split(abstract_model(cfg))
    tgraph, tstate = nnx.split(abstract_model(cfg))
    B, D = 1, cfg.d_model

    def temp_bytes(T, chunk):
        def f(state, tstate, h_s, h_t, labels):
            def loss(state, h_s):
                student, teacher = nnx.merge(graphdef, state), nnx.merge(tgraph, tstate)
                return distill_loss(student.logits, h_s, labels, DenseTargets(h_t, teacher.logits),
                                    kind="jsd", temperature=2.0, chunk=chunk)[0]
            return jax.grad(loss, argnums=(0, 1))(state, h_s)

        sds = jax.ShapeDtypeStruct
        args = (state, tstate, sds((B, T, D), jnp.float32), sds((B, T, D), jnp.float32), sds((B, T), jnp.int32))
        stats = jax.jit(f).lower(*args).compile().memory_analysis()
        assert stats is not None, "memory_analysis unavailable on this backend"
        return stats.temp_size_in_bytes

    full = B * 2048 * cfg.vocab_size * 4  # one (B, T, V) float32 buffer: 512 MiB
    chunked, short = temp_bytes(2048, 64), temp_bytes(512, 64)
    assert chunked < full / 4, (chunked, full)
    assert chunked - short < B * 64 * cfg.vocab_size * 4 / 4, (chunked, short)  # T-independent
    assert temp_bytes(512, 512) > B * 512 * cfg.vocab_size * 4  # unchunked: >= one (B, T, V) buffer


# ---- argument checks ----

@pytest.mark.parametrize("kw,message", [
    (dict(kind="kl"), "unknown kind 'kl'; choose one of"),
    (dict(kind="jsd", beta=1.5), r"beta must be a number in \[0, 1\], got 1\.5"),
    (dict(beta=-0.1), r"beta must be a number in \[0, 1\], got -0\.1"),
    (dict(temperature=0.0), "temperature must be > 0, got 0.0"),
    (dict(temperature=-1.0), "temperature must be > 0, got -1.0"),
    (dict(alpha=1.1), r"alpha must be in \[0, 1\], got 1\.1"),
    (dict(alpha=-0.5), r"alpha must be in \[0, 1\], got -0\.5"),
    (dict(chunk=0), "chunk must be a positive int, got 0"),
], ids=["kind", "beta>1", "beta<0", "temperature=0", "temperature<0", "alpha>1", "alpha<0", "chunk=0"])
def test_bad_arguments(small, kw, message):
    zs, zt, labels, _ = small
    with pytest.raises(NanoError, match=message):
        run(zs, labels, DenseTargets(jnp.asarray(zt, jnp.float32), IDENTITY), **kw)


def test_bad_shapes(small):
    zs, zt, labels, _ = small
    ids, lp = _topk(zt, 2)
    ids, lp = jnp.asarray(ids), jnp.asarray(lp, jnp.float32)
    bad = [(SparseTargets(ids[:, :2], lp[:, :2]), r"sparse ids must be integer \(B, T, k\)"),  # T mismatch
           (SparseTargets(ids, lp[..., :1]), r"sparse logprobs shape \(2, 3, 1\) != ids shape \(2, 3, 2\)"),
           (SparseTargets(ids, lp, jnp.ones((2, 3, 3))), r"sparse weights shape \(2, 3, 3\) != ids shape"),
           (SparseTargets(lp, lp), r"sparse ids must be integer .*got float32"),  # float ids
           (SparseTargets(ids[..., 0], lp[..., 0]), r"sparse ids must be integer \(B, T, k\)"),  # not (B, T, k)
           (DenseTargets(jnp.asarray(zt[:1], jnp.float32), IDENTITY), r"teacher hidden shape \(1, 3, 4\)"),  # B
           ("not targets", "targets must be DenseTargets or SparseTargets, got str")]
    for targets, message in bad:
        with pytest.raises(NanoError, match=message):
            run(zs, labels, targets)
    with pytest.raises(NanoError, match=r"labels shape \(2, 2\) != \(B, T\) = \(2, 3\)"):
        run(zs, labels[:, :2], SparseTargets(ids, lp))
    with pytest.raises(NanoError, match=r"mask shape \(3, 2\) != \(B, T\) = \(2, 3\)"):
        run(zs, labels, SparseTargets(ids, lp), mask=jnp.ones((3, 2), bool))
