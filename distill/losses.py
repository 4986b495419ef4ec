"""Knowledge-distillation losses over the vocabulary, `chunk` positions at a time.

For a 262,144-token vocabulary the (B, T, V) logits of student or teacher must never exist at
once: each loss maps over chunks of `chunk` positions (`jax.lax.map`), computes that chunk's
student (and dense teacher) logits, reduces them over V to per-position numbers, and keeps only
those. The chunk body is wrapped in `jax.checkpoint`, so the backward pass recomputes a chunk's
logits instead of storing them: peak memory is O(B * chunk * V) forwards and backwards.

Conventions:
- Temperature tau divides student and teacher logits, and every distillation term is multiplied
  by tau**2 (Hinton et al. 2015) so gradient magnitudes stay comparable across temperatures. The
  metrics (`kl`, `teacher_ce`, `ce`) are always at tau = 1.
- `jsd` is GKD's generalized Jensen-Shannon divergence with TRL's `generalized_jsd_loss`
  convention (P = teacher, Q = student, M = beta * P + (1 - beta) * Q):
      JSD_beta = beta * KL(P || M) + (1 - beta) * KL(Q || M)
  and, as in TRL, beta = 0 is exactly forward KL(P || Q) and beta = 1 exactly reverse KL(Q || P)
  (the formula itself tends to beta * KL(P || Q) and (1 - beta) * KL(Q || P) there, i.e. 0).
- Every value is the mean over positions selected by `mask` (bool, or float weights).
"""

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from nano.chunks import merge_positions, split_positions
from nano.errors import NanoError

Kind = Literal["forward_kl", "reverse_kl", "jsd"]
KINDS: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")
LogitsFn = Callable[[Float[Array, "B c D"]], Float[Array, "B c V"]]

_NEG = -1e30  # finite log(0) off a sparse support: values and gradients stay NaN-free
_PAD_BELOW = -1e20  # sparse logprobs at or below this are padding (-inf, or a finite -1e30)


@dataclasses.dataclass(frozen=True)
class DenseTargets:
    """Online teacher: its final hidden states and its LM head (e.g. `teacher.logits`).

    Teacher logits are produced chunk by chunk like the student's, and never differentiated.
    Build it inside the jitted step (`logits_fn` closes over the teacher's parameters)."""

    hidden: Float[Array, "B T Dt"]
    logits_fn: LogitsFn


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseTargets:
    """Offline teacher cache: k token ids per position with their teacher log-probs.

    `logprobs` are log p_teacher(id) under the full softmax at temperature 1. Two schemes:
    - top-k (`weights=None`): the target is the teacher restricted to the k ids and
      renormalised, q_i = p_i / sum_j p_j; at temperature tau, q_i = p_i**(1/tau) / sum_j
      p_j**(1/tau).
    - sampled (Gemma 3): k draws with replacement from the teacher, stored as unique ids with
      `weights` = counts / k (padding: weight 0, id 0). The target is the empirical sample
      distribution q_i = w_i, an unbiased estimate of the full teacher distribution. At
      temperature tau it is importance-reweighted, q_i ∝ w_i * p_i**(1/tau - 1): the
      self-normalised estimate of the tempered teacher p**(1/tau) / Z. Top-k targets passed
      with weights = their renormalised probabilities give exactly the top-k target above.
    Padding: weight 0, or a logprob <= -1e20 (-inf, or a finite pad such as -1e30).
    Forward KL against these targets is an exact KL(q || student) over the full student
    softmax; reverse KL and JSD are computed on the support only (student renormalised over
    the valid ids), since the teacher is unknown elsewhere.
    """

    ids: Int[Array, "B T k"]
    logprobs: Float[Array, "B T k"]
    weights: Float[Array, "B T k"] | None = None


LossTargets = DenseTargets | SparseTargets  # the teacher signal `distill_loss` accepts


def distill_loss(student_logits_fn: LogitsFn, h_s: Float[Array, "B T D"],
                 labels: Int[Array, "B T"], targets: LossTargets, *, kind: Kind = "forward_kl",
                 temperature: float | Float[Array, ""] = 1.0, beta: float = 0.5,
                 alpha: float | Float[Array, ""] = 0.0,
                 mask: Bool[Array, "B T"] | Float[Array, "B T"] | None = None,
                 chunk: int = 128) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """`(1 - alpha) * distill + alpha * CE(labels)`, each the mean over masked-in positions.

    `student_logits_fn` maps final hidden states (B, c, D) to float32 logits (B, c, V), e.g.
    `student.logits`. `kind`, `beta` and `chunk` are static; `temperature` and `alpha` may be
    traced (a schedule) and are then not range-checked.

    Metrics: `loss`; `distill` (the tau-scaled distillation term); `kl`, forward KL(teacher ||
    student) at tau = 1 over whatever the teacher gives (full vocab, or the sparse target q);
    `teacher_ce`, the soft cross-entropy -sum_v q_v log p_student(v) at tau = 1 (= kl + teacher
    entropy: Gemma 2's objective); `ce`, the hard-label cross-entropy; `agreement`, the fraction
    of positions where student and teacher argmax agree (sparse: the highest-logprob id).
    """
    B, T = _check(h_s, labels, targets, kind=kind, temperature=temperature, beta=beta,
                  alpha=alpha, mask=mask, chunk=chunk)
    m = jnp.ones((B, T), jnp.float32) if mask is None else mask.astype(jnp.float32)
    c = min(chunk, T)

    if isinstance(targets, DenseTargets):
        xs = (h_s, labels, targets.hidden)

        def terms(hs, lab, ht):
            z = student_logits_fn(hs).astype(jnp.float32)  # (B, c, V)
            zt = jax.lax.stop_gradient(targets.logits_fn(ht).astype(jnp.float32))  # (B, c, V)
            return _dense_terms(z, zt, lab, kind=kind, tau=temperature, beta=beta)
    else:
        w = () if targets.weights is None else (targets.weights,)
        xs = (h_s, labels, targets.ids, targets.logprobs, *w)

        def terms(hs, lab, ids, logprobs, weights=None):
            z = student_logits_fn(hs).astype(jnp.float32)  # (B, c, V)
            return _sparse_terms(z, lab, ids, logprobs, weights, kind=kind, tau=temperature, beta=beta)

    # checkpoint: the backward pass recomputes each chunk's logits rather than saving C of them.
    body = jax.checkpoint(lambda args: terms(*args))
    per_chunk = jax.lax.map(body, tuple(split_positions(x, c) for x in xs))  # each (C, B, c)
    per_pos = {k: merge_positions(v, T) for k, v in per_chunk.items()}  # (B, T)

    n = jnp.sum(m)
    n = jnp.where(n > 0, n, 1.0)  # an all-masked batch gives 0, not NaN
    mean = {k: jnp.sum(jnp.where(m > 0, v, 0.0) * m) / n for k, v in per_pos.items()}
    loss = (1.0 - alpha) * mean["distill"] + alpha * mean["ce"]
    return loss, {"loss": loss, **mean}


def _dense_terms(z: Float[Array, "B c V"], zt: Float[Array, "B c V"], labels: Int[Array, "B c"],
                 *, kind: Kind, tau, beta: float) -> dict[str, Float[Array, "B c"]]:
    log_s, log_t = jax.nn.log_softmax(z), jax.nn.log_softmax(zt)
    if _is_one(tau):
        log_sT, log_tT = log_s, log_t
    else:
        log_sT, log_tT = jax.nn.log_softmax(z / tau), jax.nn.log_softmax(zt / tau)
    return {
        "distill": _divergence(log_tT, log_sT, kind=kind, beta=beta) * tau ** 2,
        "kl": _kl(log_t, log_s),
        "teacher_ce": -jnp.sum(jnp.exp(log_t) * log_s, axis=-1),
        "ce": -_gather(log_s, labels),
        "agreement": (jnp.argmax(z, -1) == jnp.argmax(zt, -1)).astype(jnp.float32),
    }


def _sparse_terms(z: Float[Array, "B c V"], labels: Int[Array, "B c"], ids: Int[Array, "B c k"],
                  logprobs: Float[Array, "B c k"], weights: Float[Array, "B c k"] | None,
                  *, kind: Kind, tau, beta: float) -> dict[str, Float[Array, "B c"]]:
    logprobs = jax.lax.stop_gradient(logprobs)
    valid = logprobs > _PAD_BELOW
    if weights is not None:
        weights = jax.lax.stop_gradient(weights)
        valid &= weights > 0

    def target(t):  # teacher target log q at temperature t, _NEG off the support
        if weights is None:
            x = logprobs if _is_one(t) else logprobs / t
        else:
            x = jnp.log(weights) if _is_one(t) else jnp.log(weights) + (1.0 / t - 1.0) * logprobs
        return _log_normalize(x, valid)

    z_ids = jnp.take_along_axis(z, ids, axis=-1)  # (B, c, k)
    lse1 = jax.nn.logsumexp(z, axis=-1)  # (B, c)
    s1 = z_ids - lse1[..., None]  # student full-softmax log-probs of the ids
    t1 = target(1.0)
    if _is_one(tau):
        sT, tT = s1, t1
    else:
        sT, tT = z_ids / tau - jax.nn.logsumexp(z / tau, axis=-1)[..., None], target(tau)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        distill = _kl(tT, sT)  # exact: q is 0 off the support
    else:  # on the support: the student renormalised over the valid ids
        distill = _divergence(tT, _log_normalize(z_ids / tau, valid), kind=kind, beta=beta)
    top = jnp.argmax(jnp.where(valid, logprobs, -jnp.inf), axis=-1)  # (B, c)
    teacher_top = jnp.take_along_axis(ids, top[..., None], axis=-1)[..., 0]
    return {
        "distill": distill * tau ** 2,
        "kl": _kl(t1, s1),
        "teacher_ce": -jnp.sum(jnp.exp(t1) * s1, axis=-1),
        "ce": lse1 - _gather(z, labels),
        "agreement": (jnp.argmax(z, -1) == teacher_top).astype(jnp.float32),
    }


def _divergence(log_t: Float[Array, "... V"], log_s: Float[Array, "... V"], *, kind: Kind,
                beta: float) -> Float[Array, "..."]:
    """Teacher/student log-probs (normalised over the last axis) -> the divergence of `kind`."""
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl(log_t, log_s)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl(log_s, log_t)
    log_m = jnp.logaddexp(log_t + jnp.log(beta), log_s + jnp.log1p(-beta))  # M = beta P + (1-beta) Q
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def _kl(log_p: Float[Array, "... V"], log_q: Float[Array, "... V"]) -> Float[Array, "..."]:
    """KL(p || q) over the last axis; entries at _NEG contribute exp(_NEG) = 0."""
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _log_normalize(x: Float[Array, "... k"], valid: Bool[Array, "... k"]) -> Float[Array, "... k"]:
    """log-softmax over the valid entries, _NEG elsewhere (and everywhere if none is valid)."""
    x = jnp.where(valid, x, _NEG)
    return jnp.where(valid, x - jax.nn.logsumexp(x, axis=-1, keepdims=True), _NEG)


def _gather(x: Float[Array, "B c V"], idx: Int[Array, "B c"]) -> Float[Array, "B c"]:
    # clip: masked-out positions may carry ignore-index labels such as -100
    return jnp.take_along_axis(x, idx[..., None], axis=-1, mode="clip")[..., 0]


def _concrete(x) -> float | None:
    """The value of a Python/NumPy/concrete JAX scalar; None for a tracer."""
    try:
        return float(x)
    except jax.errors.ConcretizationTypeError:
        return None


def _is_one(x) -> bool:
    return _concrete(x) == 1.0


def _check(h_s, labels, targets, *, kind, temperature, beta, alpha, mask, chunk) -> tuple[int, int]:
    if kind not in KINDS:
        raise NanoError(f"distill loss: unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise NanoError(f"distill loss: beta must be a number in [0, 1], got {beta!r}")
    tau, a = _concrete(temperature), _concrete(alpha)
    if tau is not None and not tau > 0.0:
        raise NanoError(f"distill loss: temperature must be > 0, got {temperature!r}")
    if a is not None and not 0.0 <= a <= 1.0:
        raise NanoError(f"distill loss: alpha must be in [0, 1], got {alpha!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise NanoError(f"distill loss: chunk must be a positive int, got {chunk!r}")
    if h_s.ndim != 3:
        raise NanoError(f"distill loss: student hidden states must be (B, T, D), got shape {h_s.shape}")
    bt = tuple(h_s.shape[:2])
    for name, x in (("labels", labels), ("mask", mask)):
        if x is not None and tuple(x.shape) != bt:
            raise NanoError(f"distill loss: {name} shape {tuple(x.shape)} != (B, T) = {bt}")
    if isinstance(targets, DenseTargets):
        if targets.hidden.ndim != 3 or tuple(targets.hidden.shape[:2]) != bt:
            raise NanoError(f"distill loss: teacher hidden shape {tuple(targets.hidden.shape)} != (B, T, Dt) with (B, T) = {bt}")
    elif isinstance(targets, SparseTargets):
        ids = targets.ids
        if ids.ndim != 3 or tuple(ids.shape[:2]) != bt or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise NanoError(f"distill loss: sparse ids must be integer (B, T, k) with (B, T) = {bt}, got {ids.dtype} {tuple(ids.shape)}")
        for name, x in (("logprobs", targets.logprobs), ("weights", targets.weights)):
            if x is not None and tuple(x.shape) != tuple(ids.shape):
                raise NanoError(f"distill loss: sparse {name} shape {tuple(x.shape)} != ids shape {tuple(ids.shape)}")
    else:
        raise NanoError(f"distill loss: targets must be DenseTargets or SparseTargets, got {type(targets).__name__}")
    return bt
