"""quantize/{int4,mse,gptq,awq} and nano/qtensor: exact values on hand-made inputs, bit-exact nibble packing,
clipping/GPTQ/AWQ never worse than round-to-nearest, GPTQ == RTN for H = I, argument checks."""

import numpy as np
import pytest

from nano.errors import NanoError
from nano.qtensor import QTensor, dequantize, pack_int4, unpack_int4
from quantize.awq import search_scales
from quantize.gptq import GPTQ
from quantize.int4 import quantize
from quantize.mse import quantize_mse
from quantize.stats import InputStats
from quantize.tied import buckets, row_damps, solve_tied, token_counts


def sse(a, b):
    return float(((np.asarray(a, np.float64) - b) ** 2).sum())


def group_sse(w, wh, group):
    d = (np.asarray(w, np.float64) - wh) ** 2
    return d.reshape(w.shape[0] // group, group, w.shape[1]).sum(axis=1)


# ---- int4: round to nearest ----

def test_symmetric_exact_values():
    w = np.array([[1.0, -0.5],
                  [-3.5, 0.2],
                  [0.0, -7.0],
                  [0.0, 2.2]], np.float32)
    qt = quantize(w, group=2)
    assert isinstance(qt, QTensor) and qt.bits == 4 and qt.group == 2 and qt.zero is None
    assert qt.q.dtype == np.int8 and qt.scale.dtype == np.float32
    np.testing.assert_array_equal(qt.q, [[2, -7], [-7, 3], [0, -7], [0, 2]])
    np.testing.assert_allclose(qt.scale, [[0.5, 0.5 / 7], [0.0, 1.0]], rtol=1e-7)
    assert qt.scale[1, 0] == 0.0  # the all-zero group
    wh = dequantize(qt)
    assert wh.dtype == np.float32
    np.testing.assert_allclose(wh, [[1.0, -0.5], [-3.5, 3 * 0.5 / 7], [0.0, -7.0], [0.0, 2.0]], rtol=1e-6)
    assert wh[2, 0] == 0.0 and wh[3, 0] == 0.0


def test_asymmetric_exact_values():
    w = np.array([[1.25, 0.5],
                  [-2.5, 2.0],
                  [0.0, 3.0],
                  [0.0, 3.0]], np.float32)
    qt = quantize(w, group=2, symmetric=False)
    np.testing.assert_array_equal(qt.q, [[15, 4], [0, 15], [0, 15], [0, 15]])
    np.testing.assert_allclose(qt.scale, [[0.25, 2 / 15], [0.0, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(qt.zero, [[10.0, 0.0], [0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(dequantize(qt), [[1.25, 4 * 2 / 15], [-2.5, 2.0], [0.0, 3.0], [0.0, 3.0]],
                               rtol=1e-6)


def test_q4_0_convention():
    w = np.array([[1.0], [-4.0], [3.9], [0.5]], np.float32)  # signed extreme -4.0 -> d = 0.5
    qt = quantize(w, group=4, convention="q4_0")
    np.testing.assert_array_equal(qt.scale, [[0.5]])
    np.testing.assert_array_equal(qt.q[:, 0], [2, -8, 7, 1])  # 3.9 / 0.5 = 7.8 saturates at 7


def test_all_zero_matrix():
    w = np.zeros((64, 8), np.float32)
    for sym in (True, False):
        for group in (32, None):
            qt = quantize(w, group=group, symmetric=sym)
            wh = dequantize(qt)
            assert np.all(qt.q == 0) and np.all(qt.scale == 0)
            assert np.array_equal(wh, w) and np.all(np.isfinite(wh))


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group,bits", [(32, 4), (None, 4), (16, 8)])
def test_rtn_error_at_most_half_step(sym, group, bits):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((128, 24)).astype(np.float32)
    qt = quantize(w, group=group, bits=bits, symmetric=sym)
    g = 128 if group is None else group
    assert qt.scale.shape == (128 // g, 24)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
    assert qt.q.min() >= lo and qt.q.max() <= hi
    err = np.abs(w - dequantize(qt)).reshape(128 // g, g, 24)
    assert np.all(err <= qt.scale[:, None, :] / 2 * (1 + 1e-5) + 1e-7)


# ---- pack ----

def test_pack_hand_written_bytes():
    assert pack_int4(np.array([-8, 7, 0, -1], np.int8)).tolist() == [0x78, 0xF0]
    assert pack_int4(np.array([1, 2, 3], np.int8)).tolist() == [0x21, 0x03]  # pad: zero high nibble
    assert pack_int4(np.array([[1, -2], [3, -4]], np.int8)).tolist() == [0xE1, 0xC3]  # row-major
    assert pack_int4(np.array([15, 0, 1], np.uint8), signed=False).tolist() == [0x0F, 0x01]
    np.testing.assert_array_equal(unpack_int4(np.array([0x78, 0xF0], np.uint8), (4,)), [-8, 7, 0, -1])
    np.testing.assert_array_equal(unpack_int4(np.array([0xE1, 0xC3], np.uint8), (2, 2)), [[1, -2], [3, -4]])
    np.testing.assert_array_equal(unpack_int4(np.array([0x0F, 0x01], np.uint8), (3,), signed=False),
                                  [15, 0, 1])
    assert pack_int4(np.array([-8, 7, 0, -1], np.int8)).dtype == np.uint8


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (4, 6), (2, 3, 5)])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_round_trip(shape, signed):
    rng = np.random.default_rng(2)
    lo, hi = (-8, 7) if signed else (0, 15)
    q = rng.integers(lo, hi + 1, size=shape).astype(np.int8)
    p = pack_int4(q, signed=signed)
    assert p.shape == ((q.size + 1) // 2,)
    u = unpack_int4(p, shape, signed=signed)
    assert u.dtype == np.int8 and u.shape == shape
    np.testing.assert_array_equal(u, q)


def test_pack_all_zero_and_quantized():
    assert pack_int4(np.zeros((3, 3), np.int8)).tolist() == [0] * 5
    w = np.random.default_rng(3).standard_normal((64, 10)).astype(np.float32)
    qt = quantize(w)
    np.testing.assert_array_equal(unpack_int4(pack_int4(qt.q), qt.q.shape), qt.q)


# ---- MSE clipping ----

@pytest.mark.parametrize("sym", [True, False])
def test_mse_clipping_never_worse_than_rtn(sym):
    rng = np.random.default_rng(4)
    w = rng.standard_t(3, size=(256, 64)).astype(np.float32)
    rtn = dequantize(quantize(w, group=32, symmetric=sym))
    mse_qt = quantize_mse(w, group=32, symmetric=sym)
    mse = dequantize(mse_qt)
    g_rtn, g_mse = group_sse(w, rtn, 32), group_sse(w, mse, 32)
    assert np.all(g_mse <= g_rtn * (1 + 1e-6))
    assert g_mse.mean() < (0.9 if sym else 0.98) * g_rtn.mean()  # measured ~0.8 / ~0.96
    assert mse_qt.q.min() >= (-8 if sym else 0) and mse_qt.q.max() <= (7 if sym else 15)


def test_mse_steps_one_is_rtn():
    w = np.random.default_rng(5).standard_normal((64, 8)).astype(np.float32)
    a, b = quantize_mse(w, steps=1), quantize(w)
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.scale, b.scale)


# ---- GPTQ ----

def toy_layer(seed=6, n=2048, n_in=64, n_out=32):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in)
    x = rng.standard_normal((n, n_in)) @ A  # correlated inputs
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    return x, w


def out_err(x, w, wh):
    return float(((x @ (np.asarray(w, np.float64) - wh)) ** 2).sum())


def test_gptq_hessian_running_average():
    x, _ = toy_layer()
    g = GPTQ(64)
    for chunk in np.array_split(x, [100, 1000]):
        g.add_batch(chunk)
    assert g.nsamples == len(x)
    np.testing.assert_allclose(g.H, 2 / len(x) * x.T @ x, rtol=1e-10, atol=1e-12)
    g2 = GPTQ(64)
    g2.add_batch(x.reshape(16, -1, 64))  # leading axes are samples
    np.testing.assert_allclose(g2.H, g.H, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym,group", [(True, 32), (False, 32), (True, None), (True, 8)])
def test_gptq_beats_rtn(act_order, sym, group):
    x, w = toy_layer()
    g = GPTQ(64)
    g.add_batch(x)
    qt = g.solve(w, bits=4, group=group, act_order=act_order, symmetric=sym, block=16)
    rtn = quantize(w, bits=4, group=group, symmetric=sym)
    assert qt.q.shape == w.shape and qt.scale.shape == rtn.scale.shape
    assert qt.q.min() >= (-8 if sym else 0) and qt.q.max() <= (7 if sym else 15)
    e_gptq, e_rtn = out_err(x, w, dequantize(qt)), out_err(x, w, dequantize(rtn))
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym,group,bits", [(True, 32, 4), (False, 32, 4), (True, None, 4), (True, 8, 8)])
def test_gptq_identity_hessian_is_rtn(act_order, sym, group, bits):
    """H = I, no damping: U = I, nothing propagates, scales see the original weights -> RTN exactly."""
    w = np.random.default_rng(7).standard_normal((64, 12)).astype(np.float32)
    g = GPTQ(64)
    g.add_batch(np.vstack([8 * np.eye(64), np.zeros((64, 64))]))  # n = 128: 2/n x^T x = I exactly
    np.testing.assert_array_equal(g.H, np.eye(64))
    qt = g.solve(w, bits=bits, group=group, symmetric=sym, damp=0.0, act_order=act_order, block=16)
    rtn = quantize(w, bits=bits, group=group, symmetric=sym)
    np.testing.assert_array_equal(qt.q, rtn.q)
    np.testing.assert_array_equal(qt.scale, rtn.scale)
    if not sym:
        np.testing.assert_array_equal(qt.zero, rtn.zero)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_identity_hessian_with_clip_search_is_mse(act_order):
    """Same with the reference's least-squares clip search for the group scales: == quantize_mse."""
    w = np.random.default_rng(8).standard_normal((64, 12)).astype(np.float32)
    g = GPTQ(64)
    g.add_batch(np.vstack([8 * np.eye(64), np.zeros((64, 64))]))
    qt = g.solve(w, group=32, damp=0.0, act_order=act_order, block=16, clip_steps=20)
    mse = quantize_mse(w, group=32, steps=20)
    np.testing.assert_array_equal(qt.q, mse.q)
    np.testing.assert_array_equal(qt.scale, mse.scale)
    assert not np.array_equal(mse.scale, quantize(w, group=32).scale)  # the search did clip somewhere


def naive_gptq(w, H, *, group, symmetric, damp, bits=4):
    """Textbook OBS/GPTQ without Cholesky or blocks: quantize input rows in order, spread each
    error with the current inverse Hessian row, then drop the row from H^-1 (Schur complement)."""
    W = w.T.astype(np.float64)
    n_in = W.shape[1]
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(n_in)
    Hinv = np.linalg.inv(Hd)
    g = n_in if group is None else group
    Q = np.zeros(W.shape, np.int64)
    for i in range(n_in):
        if i % g == 0:  # params from the current (updated) weights of the group
            sub = quantize(W[:, i:i + g].T.astype(np.float32), bits=bits, group=None, symmetric=symmetric)
            sc, ze = sub.scale[0], None if sub.zero is None else sub.zero[0]
        t = W[:, i].astype(np.float32) / np.where(sc == 0, 1, sc) + (0 if ze is None else ze)
        lo, hi = (-8, 7) if symmetric else (0, 15)
        q = np.where(sc == 0, 0, np.clip(np.rint(t), lo, hi))
        deq = ((q - (0 if ze is None else ze)) * sc).astype(np.float32)
        Q[:, i] = q
        err = (W[:, i] - deq) / Hinv[i, i]
        W[:, i:] -= np.outer(err, Hinv[i, i:])
        Hinv = Hinv - np.outer(Hinv[:, i], Hinv[i, :]) / Hinv[i, i]  # condition on row i
    return Q.T


@pytest.mark.parametrize("sym,group", [(True, 8), (False, 8), (True, None)])
def test_gptq_matches_naive_reference(sym, group):
    x, w = toy_layer(n=256, n_in=32, n_out=16)
    g = GPTQ(32)
    g.add_batch(x)
    ref = naive_gptq(w, g.H, group=group, symmetric=sym, damp=0.01)
    for block in (8, 16, 128):  # lazy block updates do not change the result
        qt = g.solve(w, group=group, symmetric=sym, damp=0.01, block=block)
        assert np.mean(qt.q != ref) < 0.01  # a rare float tie may round the other way
    if group is not None:  # static groups: the scales are RTN's (original weights)
        st = g.solve(w, group=group, symmetric=sym, static_groups=True)
        np.testing.assert_array_equal(st.scale, quantize(w, group=group, symmetric=sym).scale)


def columnwise_gptq(w, H, *, bits=4, group=32, damp=0.01, act_order=False, block=128, symmetric=True,
                    static_groups=False, clip_steps=1):
    """The previous solver, kept as a reference: float64, U = chol(H^-1) upper, one input row at a
    time with immediate updates inside a block of ``block`` rows and one matmul per block."""
    from quantize.int4 import codes, grouped, params
    from quantize.mse import search_params
    from nano.qtensor import values

    def scales(wg):
        if clip_steps > 1:
            return search_params(wg, bits, symmetric, steps=clip_steps)
        return params(wg, bits, symmetric)

    n_in, n_out = w.shape
    W = w.T.astype(np.float64)
    H = H.copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static = group is None or act_order or static_groups
    if static:
        sc_all, ze_all = scales(grouped(W.T.astype(np.float32), group))
    g = n_in if group is None else group
    if group is not None:
        block = max(group, block // group * group)
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(n_in)
    W, H = W[:, perm], H[perm][:, perm]
    H[np.diag_indices(n_in)] += damp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros((n_out, n_in), np.int8)
    scale = np.zeros((n_in // g, n_out), np.float32)
    zero = None if symmetric else np.zeros((n_in // g, n_out), np.float32)
    if static:
        scale[:] = sc_all[:, 0, :]
        if zero is not None:
            zero[:] = ze_all[:, 0, :]
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        W1, Err1, U1 = W[:, i1:i2].copy(), np.zeros((n_out, i2 - i1)), U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            gi = perm[i1 + i] // g
            if static:
                sc, ze = scale[gi], None if zero is None else zero[gi]
            elif (i1 + i) % g == 0:
                s, z = scales(W1[:, i:i + g].T.astype(np.float32)[None])
                sc, ze = s[0, 0], None if z is None else z[0, 0]
                scale[gi] = sc
                if zero is not None:
                    zero[gi] = ze
            q = codes(W1[:, i].astype(np.float32), sc, ze, bits)
            Q[:, i1 + i] = q
            err = (W1[:, i] - values(q, sc, ze).astype(np.float64)) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    q_out = np.empty_like(Q)
    q_out[:, perm] = Q
    return q_out.T, scale, zero


@pytest.mark.parametrize("kw", [dict(group=8), dict(group=8, symmetric=False), dict(group=None),
                                dict(group=8, act_order=True), dict(group=16, static_groups=True),
                                dict(group=64), dict(group=8, clip_steps=20), dict(group=8, block=8)])
def test_blocked_gptq_equals_the_columnwise_solver(kw):
    """The float32 lazy-batch solver (Cholesky of H, no inverse; 32-row sub-blocks; OBS-current
    group weights by a small triangular solve) gives the float64 column loop's codes bit for bit
    on these small layers, and its scales to within float32 rounding of the group maxima."""
    x, w = toy_layer(n=512, n_in=128, n_out=24)
    g = GPTQ(128)
    g.add_batch(x)
    q_ref, s_ref, z_ref = columnwise_gptq(w, g.H, **kw)
    qt = g.solve(w, **kw)
    np.testing.assert_array_equal(qt.q, q_ref)
    np.testing.assert_allclose(qt.scale, s_ref, rtol=1e-6, atol=0)
    if z_ref is not None:
        np.testing.assert_allclose(qt.zero, z_ref, rtol=1e-5, atol=1e-6)


def test_solve_many_equals_one_solve_each():
    """q/k/v (or gate/up) solved together, columns side by side: the same codes and scales as
    one solve per kernel, and the Hessian is factorized once."""
    x, _ = toy_layer(n=512)
    rng = np.random.default_rng(11)
    ws = [rng.standard_normal((64, n)).astype(np.float32) for n in (32, 8, 8)]
    g = GPTQ(64)
    g.add_batch(x)
    joint = g.solve_many(ws, group=32, act_order=True, clip_steps=20, names=["q", "k", "v"])
    f = g.factor(damp=0.01, act_order=True)
    for w, qt in zip(ws, joint):
        one = GPTQ(64)
        one.add_batch(x)
        ref = one.solve(w, group=32, act_order=True, clip_steps=20)
        np.testing.assert_array_equal(qt.q, ref.q)
        np.testing.assert_array_equal(qt.scale, ref.scale)
    assert g.factor(damp=0.01, act_order=True) is f  # cached, not recomputed
    assert g.factor(damp=0.1, act_order=True) is not f


def test_tied_gptq_is_plain_gptq_per_damping_bucket():
    """The tied embedding (d, V): lookup 0 is plain GPTQ bit for bit; equal frequencies are plain
    GPTQ at damp + lookup; mixed frequencies solve each bucket's rows at its damping."""
    x, _ = toy_layer(n=512)
    stats = InputStats(64)
    stats.add_batch(x)
    w = np.random.default_rng(3).standard_normal((64, 40)).astype(np.float32)  # 40 "tokens"
    kw = dict(group=32, act_order=True, clip_steps=20)

    def plain(cols, damp):
        return GPTQ.from_stats(stats).solve(w[:, cols], damp=damp, **kw)

    every = np.arange(40)
    for counts, lookup, damp in [(np.arange(40.0), 0.0, 0.01), (np.full(40, 3.0), 0.5, 0.51)]:
        got, ref = solve_tied(stats, w, counts, lookup=lookup, **kw), plain(every, damp)
        np.testing.assert_array_equal(got.q, ref.q)
        np.testing.assert_array_equal(got.scale, ref.scale)

    counts = np.zeros(40)
    counts[:4] = [30, 30, 10, 1]  # 71 tokens: f * V = 16.9, 16.9, 5.6, 0.56
    damps = row_damps(counts, damp=0.01, lookup=0.1)
    np.testing.assert_allclose(damps[:5], [0.01 + 0.1 * 30 * 40 / 71] * 2 + [0.01 + 0.1 * 10 * 40 / 71,
                                                                         0.01 + 0.1 * 40 / 71, 0.01])
    parts = buckets(damps)
    assert [rows.tolist() for _, rows in parts] == [list(range(4, 40)), [3], [2], [0, 1]]
    got = solve_tied(stats, w, counts, lookup=0.1, **kw)
    for d, rows in parts:
        ref = plain(rows, d)
        np.testing.assert_array_equal(got.q[:, rows], ref.q)
        np.testing.assert_array_equal(got.scale[:, rows], ref.scale)
    undamped = buckets(row_damps(counts, damp=0.0, lookup=0.1))  # damp 0: unseen rows stay apart
    assert [(d, rows.tolist()) for d, rows in undamped][:2] == [(0.0, list(range(4, 40))), (0.1 * 1 * (40 / 71), [3])]
    np.testing.assert_array_equal(token_counts(np.array([[0, 2], [2, 39]]), 40)[[0, 1, 2, 39]], [1, 0, 2, 1])
    with pytest.raises(NanoError, match="outside"):
        token_counts(np.array([40]), 40)


@pytest.mark.parametrize("sym,conv,bits", [(True, "max7", 4), (False, "max7", 4), (True, "q4_0", 4), (True, "max7", 8)])
def test_clip_search_does_not_depend_on_chunks(monkeypatch, sym, conv, bits):
    """The chunked, threaded clip search equals one whole-array pass bit for bit."""
    import ml_dtypes

    import quantize.mse as mse

    rng = np.random.default_rng(12)
    wg = (rng.standard_normal((6, 32, 300)) * rng.uniform(0.1, 3, (1, 1, 300))).astype(np.float32)
    wg[0, :, 0] = 0.0  # an all-zero group
    whole = mse.search_params(wg, bits, sym, convention=conv, scale_dtype=ml_dtypes.bfloat16)
    monkeypatch.setattr(mse, "CHUNK", 32 * 7)  # many chunks, ragged at the edges, on threads
    chunked = mse.search_params(wg, bits, sym, convention=conv, scale_dtype=ml_dtypes.bfloat16)
    np.testing.assert_array_equal(whole[0], chunked[0])
    if not sym:
        np.testing.assert_array_equal(whole[1], chunked[1])


def test_gptq_dead_inputs():
    x, w = toy_layer(n=512)
    x[:, [3, 40]] = 0.0
    g = GPTQ(64)
    g.add_batch(x)
    qt = g.solve(w, group=32)
    wh = dequantize(qt)
    assert np.all(np.isfinite(wh)) and np.all(qt.q[[3, 40]] == 0)
    assert out_err(x, w, wh) < out_err(x, w, dequantize(quantize(w)))


# ---- AWQ ----

def test_awq_not_worse_than_rtn():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((512, 64)) * np.where(np.arange(64) % 8 == 0, 20.0, 1.0)  # salient channels
    w = rng.standard_normal((64, 32)).astype(np.float32)
    s, qt = search_scales(w, x, group=32)
    assert s.shape == (64,) and s.dtype == np.float32 and np.all(s > 0)
    wh = dequantize(qt) / s[:, None]  # the effective kernel once 1/s is folded into x
    e_awq, e_rtn = out_err(x, w, wh), out_err(x, w, dequantize(quantize(w)))
    assert e_awq < 0.9 * e_rtn
    np.testing.assert_allclose((x / s) @ dequantize(qt), x @ wh, rtol=1e-4, atol=1e-3)


# ---- argument checks ----

def test_bad_arguments():
    w = np.zeros((640, 4), np.float32)
    with pytest.raises(NanoError, match=r"group 48 does not divide the input width 640 of "
                                        r"'layers.0.attn.q.kernel'; use 32, 64 or 128"):
        quantize(w, group=48, name="layers.0.attn.q.kernel")
    with pytest.raises(NanoError, match="bits 3"):
        quantize(w, bits=3)
    with pytest.raises(NanoError, match="2-D"):
        quantize(np.zeros(8, np.float32))
    with pytest.raises(NanoError, match="group 0"):
        quantize(w, group=0)
    with pytest.raises(NanoError, match="convention"):
        quantize(w, convention="q8")
    with pytest.raises(NanoError, match="NaN"):
        quantize(np.full((32, 2), np.nan, np.float32))
    with pytest.raises(NanoError, match="group 48"):
        quantize_mse(w, group=48)
    with pytest.raises(NanoError, match=r"\[-9, 7\]"):
        pack_int4(np.array([-9, 7], np.int8))
    with pytest.raises(NanoError, match="needs 2 bytes"):
        unpack_int4(np.zeros(3, np.uint8), (4,))
    g = GPTQ(640)
    with pytest.raises(NanoError, match="add_batch"):
        g.solve(w)
    with pytest.raises(NanoError, match="in_features=640"):
        g.add_batch(np.zeros((2, 64)))
    g.add_batch(np.ones((2, 640)))
    with pytest.raises(NanoError, match="group 48"):
        g.solve(w, group=48)
    with pytest.raises(NanoError, match="input width 64"):
        g.solve(np.zeros((64, 4), np.float32))
    with pytest.raises(NanoError, match="last axis"):
        search_scales(w, np.zeros((2, 64)))
