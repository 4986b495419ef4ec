"""The distillation training loop: AdamW (warmup + cosine), clipping, bf16 compute over float32
master weights, gradient accumulation, a ('data', 'fsdp') mesh, orbax checkpoints and exact
resume. Data order and randomness are pure functions of (seed, step), so a resumed run
replays the uninterrupted one."""

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from distill.distributed import barrier, is_main_process, process_rows, put_global, to_host
from distill.mesh import batch_sharding, make_mesh, replicated, tree_shardings, vocab_sharding
from distill.teacher_cache.rows import row_inputs
from nano.checkpoint import load_checkpoint, load_meta, load_tokenizer, save_checkpoint
from nano.config import get_preset
from nano.data.stream import TokenRows
from nano.errors import NanoError
from nano.eval import chunked_nll, evaluate
from nano.files import read_json, write_json
from nano.model import REMAT_POLICIES, Transformer, set_compute_dtype

LOSSES = ("forward_kl", "reverse_kl", "jsd")
COMPUTE_DTYPES = ("auto", "bfloat16", "float32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    student: str = "student_20m"  # preset name (ignored when `init` is set)
    init: str | None = None  # checkpoint the student starts from (e.g. `nano prune`'s); its shapes replace `student`
    teacher: str | None = "gemma3-270m"  # checkpoint dir or shortcut; None: cross-entropy on the data only
    data: str | None = None  # prepared data dir; None: the default preparation for the tokenizer
    tokens: int = 200_000  # training tokens (steps = tokens / (batch_size * seq_len))
    seq_len: int = 256
    batch_size: int = 8  # sequences per optimizer step, all micro-batches together
    grad_accum: int = 1
    lr: float = 3e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    loss: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5  # generalized JSD mixing
    alpha: float = 0.0  # weight of hard-label cross-entropy mixed into the distillation loss
    freeze_embed: bool = False  # keep the tied embedding / LM head as it starts (no gradient, no Adam moments)
    qat: bool = False  # quantization-aware: train through the grid of the quantized `init` checkpoint
    view_lr: float = 1.0  # a WeightView's arrays (QAT's per-group scales) train at lr x this
    onpolicy: float = 0.0  # GKD's lambda: fraction of steps trained on student-sampled continuations
    onpolicy_temperature: float = 1.0
    compute_dtype: str = "auto"  # auto: float32 on CPUs (XLA:CPU has no fast bf16: ~3x slower), bfloat16 elsewhere
    remat: str = "none"  # what each student block keeps for the backward pass (nano.model.REMAT_POLICIES)
    checkpoint_every: int = 25
    eval_every: int = 25
    eval_windows: int = 8  # held-out windows scored every eval_every steps (0: none)
    eval_window: int = 512
    seed: int = 0
    mesh_data: int = 1
    mesh_fsdp: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} (choose {', '.join(LOSSES)})")
        if self.compute_dtype not in COMPUTE_DTYPES:
            problems.append(f"compute_dtype {self.compute_dtype!r} ({', '.join(COMPUTE_DTYPES)})")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat {self.remat!r} ({', '.join(REMAT_POLICIES)})")
        if self.batch_size % self.grad_accum:
            problems.append(f"batch_size {self.batch_size} not divisible by grad_accum {self.grad_accum}")
        if not 0 <= self.alpha <= 1 or not 0 <= self.beta <= 1:
            problems.append("alpha and beta must lie in [0, 1]")
        if not 0 <= self.onpolicy <= 1:
            problems.append(f"onpolicy {self.onpolicy} (a fraction in [0, 1])")
        if self.onpolicy and not self.teacher:
            problems.append("onpolicy needs an online teacher (a checkpoint), which scores the student's samples")
        if self.temperature <= 0 or self.lr <= 0 or self.seq_len < 2 or self.tokens <= 0:
            problems.append("temperature, lr, tokens must be > 0 and seq_len >= 2")
        if self.view_lr < 0:
            problems.append(f"view_lr {self.view_lr} (a factor >= 0 on lr for QAT's scales)")
        if self.qat and not self.init:
            problems.append("qat needs init: the quantized checkpoint (`nano quantize`) whose grid it trains")
        if problems:
            raise NanoError("distill config: invalid " + "; ".join(problems))

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.seq_len))

    def resolved(self) -> "TrainConfig":
        """The config with `compute_dtype="auto"` decided for this machine's JAX backend."""
        if self.compute_dtype != "auto":
            return self
        return dataclasses.replace(self, compute_dtype="float32" if jax.default_backend() == "cpu" else "bfloat16")

    @property
    def compute_jnp_dtype(self):
        """The jnp dtype the student and an online teacher compute in (`auto` decided here)."""
        return jnp.bfloat16 if self.resolved().compute_dtype == "bfloat16" else jnp.float32

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """A JSON config file (reproducible runs), then `overrides`; unknown keys are errors."""
        data = read_json(path, missing=f"{path}: config file not found")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise NanoError(f"{path}: unknown field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**{**data, **overrides})


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1), end_value=cfg.lr * cfg.min_lr_ratio)


@dataclasses.dataclass(frozen=True)
class WeightView:
    """Extra trainable arrays through which the student's weights are seen, e.g. quantization-aware
    training's per-group scales: the forward uses `apply(weights, extra)`. With a view the trained
    parameters are `{"weights": ..., "view": extra}`."""

    extra: Any  # pytree of arrays
    apply: Callable[[Any, Any], Any]  # (weights, extra) -> weights the model computes with


def _keys(path) -> list:
    return [getattr(k, "key", None) for k in path]


def _is_embed(path) -> bool:
    """The tied embedding, and with QAT its view (the embedding's scales): freezing one alone would
    still need the (V, D) gradient through the fake-quantized table."""
    keys = _keys(path)
    return keys[:1] == ["embed"] or keys[:2] in (["weights", "embed"], ["view", "embed"])


def _is_view(path) -> bool:
    return _keys(path)[:1] == ["view"]


def model_params(cfg: TrainConfig, params, view: WeightView | None):
    """What the student computes with: `params` frozen as `cfg` says, seen through `view`."""
    params = frozen(cfg, params)
    return params if view is None else view.apply(params["weights"], params["view"])


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    # Decay matrices (kernels and the embedding), not norm gains (as in nanoGPT) or a view's arrays.
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(lambda path, p: p.ndim == 2 and not _is_view(path),
                                                                 params)
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                     optax.adamw(lr_schedule(cfg), b1=0.9, b2=0.95, weight_decay=cfg.weight_decay,
                                 mask=decay_mask))
    if cfg.view_lr != 1.0:  # Adam's steps are ~lr whatever the gradient's scale: set the view's apart
        view_mask = lambda params: jax.tree_util.tree_map_with_path(lambda path, _: _is_view(path), params)
        tx = optax.chain(tx, optax.masked(optax.scale(cfg.view_lr), view_mask))
    if not cfg.freeze_embed:
        return tx
    # The frozen embedding gets no update and no moments (its gradient is not computed either:
    # see `frozen`); clipping then sees the other parameters' gradients only.
    labels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: "frozen" if _is_embed(p) else "train",
                                                             params)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def frozen(cfg: TrainConfig, params):
    """`params` with what `cfg` freezes behind stop_gradient, so XLA never computes its gradient
    (for the tied embedding: the (V, D) weight-gradient matmul of the LM head)."""
    if not cfg.freeze_embed:
        return params
    return jax.tree_util.tree_map_with_path(lambda p, x: jax.lax.stop_gradient(x) if _is_embed(p) else x, params)


def batch_rows(num_rows: int, step: int, batch: int, seed: int) -> np.ndarray:
    """Row indices of optimizer step `step`: epochs of seeded permutations, a pure function.
    A step costs O(batch): each epoch's permutation is drawn once (see `_epoch_order`)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), num_rows)
        perm = _epoch_order(num_rows, seed, epoch)
        out.extend(perm[offset: offset + batch - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


@functools.lru_cache(maxsize=2)  # the current epoch and the next, which a batch may straddle into
def _epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s row order, memoised so steps stop redrawing it (a cache of a pure
    function, read-only): int32 below 2**31 rows, 4 MB per million rows (20 MB for 10B tokens
    in 2,048-token rows)."""
    order = np.arange(num_rows, dtype=np.int32 if num_rows < 2**31 else np.int64)
    np.random.default_rng([seed, epoch]).shuffle(order)  # = .permutation(num_rows), in half its memory
    order.flags.writeable = False
    return order


def step_loss(student: Transformer, teacher: Transformer | None, inputs: jax.Array, labels: jax.Array,
              mask: jax.Array, sparse, cfg: TrainConfig, *,
              logits_sharding=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean loss over positions selected by `mask` (B, T): position t of `inputs` predicts
    `labels[:, t]`. The teacher signal is the online `teacher`, cached `sparse` targets
    (ids, logprobs, weights), or neither (cross-entropy on the data). `logits_sharding`: how
    each (B, c, V) logits chunk is laid out on a mesh (`vocab_sharding`)."""
    from distill.losses import DenseTargets, SparseTargets, distill_loss
    from distill.targets import shared_vocab_logits

    def laid_out(logits):
        return logits if logits_sharding is None else jax.lax.with_sharding_constraint(logits, logits_sharding)

    h, _ = student.hidden(inputs, remat=cfg.remat, in_order=True)
    if teacher is not None:
        vocab = student.config.vocab_size
        targets = DenseTargets(jax.lax.stop_gradient(teacher.hidden(inputs, in_order=True)[0]),
                               lambda ht: laid_out(shared_vocab_logits(teacher.logits(ht), vocab)))
    elif sparse is not None:
        targets = SparseTargets(*sparse)
    else:
        ce = jnp.sum(chunked_nll(student, h, labels) * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return ce, {"ce": ce}
    return distill_loss(lambda hs: laid_out(student.logits(hs)), h, labels, targets, kind=cfg.loss,
                        temperature=cfg.temperature, beta=cfg.beta, alpha=cfg.alpha, mask=mask)


def is_onpolicy_step(cfg: TrainConfig, step: int) -> bool:
    """A seeded coin per step, so a resumed run makes the same choices."""
    return cfg.onpolicy > 0 and np.random.default_rng([cfg.seed, step, 1]).random() < cfg.onpolicy


def make_train_step(cfg: TrainConfig, student_graphdef, teacher_graphdef, tx: optax.GradientTransformation,
                    view: WeightView | None = None, *, mesh: Mesh | None = None):
    """The pure step `(state, teacher_params, tokens) -> (state, metrics)`; the teacher's
    weights are an argument (sharded like the student's), never a baked-in constant. `mesh`:
    the one it will run on, for the layout of the logits (`vocab_sharding`)."""
    micro = cfg.batch_size // cfg.grad_accum
    logits_sharding = None if mesh is None else vocab_sharding(mesh)

    def loss_fn(params, teacher_params, batch):
        student = nnx.merge(student_graphdef, model_params(cfg, params, view))
        teacher = None if teacher_graphdef is None else nnx.merge(teacher_graphdef, teacher_params)
        return step_loss(student, teacher, batch["inputs"], batch["labels"], batch["mask"],
                         batch.get("sparse"), cfg, logits_sharding=logits_sharding)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, teacher_params, batch):
        # (B, ...) -> (A, B/A, ...): micro-batches scanned with summed gradients
        micro_batches = jax.tree.map(lambda x: x.reshape(cfg.grad_accum, micro, *x.shape[1:]), batch)

        def accumulate(carry, mb):
            (loss, metrics), grads = grad_fn(state["params"], teacher_params, mb)
            return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

        first = jax.tree.map(lambda x: x[0], micro_batches)
        (l0, m0), g0 = jax.eval_shape(grad_fn, state["params"], teacher_params, first)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (l0, m0, g0))
        (loss, metrics, grads), _ = jax.lax.scan(accumulate, zeros, micro_batches)
        loss, metrics, grads = jax.tree.map(lambda x: x / cfg.grad_accum, (loss, metrics, grads))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
        return {"params": params, "opt_state": opt_state}, metrics

    return train_step


def jit_train_step(step: Callable, mesh: Mesh, state_shardings, teacher_shardings) -> Callable:
    """`step` (see `make_train_step`) jitted on `mesh`: state and teacher weights as sharded,
    batches split over the data axes, metrics replicated, the old state donated."""
    return jax.jit(step, in_shardings=(state_shardings, teacher_shardings, batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))


class Trainer:
    """Owns the jitted step, the sharded state and the checkpoint manager of one run.

    `rows` are the token rows to learn (labels), a `TokenRows` read on demand from the data's
    shards or an (N, seq_len) array; the model sees BOS + row[:-1], built per batch.
    The teacher signal is `teacher_ckpt` (online), `cache` (a TeacherCache), or neither."""

    def __init__(self, cfg: TrainConfig, out: str | Path, *, teacher_ckpt: Path | None,
                 rows: TokenRows | np.ndarray, eval_windows: np.ndarray | None, bos_id: int = 2, cache=None,
                 view: WeightView | None = None):
        self.cfg, self.out, self.eval_windows, self.cache, self.view = cfg, Path(out), eval_windows, cache, view
        self.rows = rows if isinstance(rows, TokenRows) else TokenRows.from_array(rows)
        self.bos_id = bos_id
        self.mesh = _mesh(cfg)
        if cfg.init:
            student = load_checkpoint(cfg.init, dtype=cfg.compute_jnp_dtype, param_dtype=jnp.float32)
            config = student.config
        else:
            config = get_preset(cfg.student)
            student = Transformer(config, rngs=nnx.Rngs(cfg.seed), dtype=cfg.compute_jnp_dtype)
        self.graphdef, params = nnx.split(student, nnx.Param)
        if view is not None:
            params = {"weights": params, "view": jax.tree.map(jnp.asarray, view.extra)}
        teacher_graphdef, teacher_params = _teacher(cfg, teacher_ckpt, config.vocab_size)
        _check_cache_vocab(cfg, cache, config.vocab_size)
        self.tx = optimizer(cfg)
        self.state_shardings, self.state = _place({"params": params, "opt_state": self.tx.init(params)}, self.mesh)
        teacher_shardings, self.teacher_params = _place(teacher_params, self.mesh)
        self.manager = _checkpoint_manager(self.out)
        self._batch_sharding = batch_sharding(self.mesh)
        self._local_rows = process_rows(self._batch_sharding, cfg.batch_size)  # this process's block
        self._step_fn = jit_train_step(make_train_step(cfg, self.graphdef, teacher_graphdef, self.tx, view,
                                                       mesh=self.mesh),
                                       self.mesh, self.state_shardings, teacher_shardings)
        self._sample_fn = _sampler(cfg, self.graphdef, self._batch_sharding, view)
        # On-policy steps score only what the student wrote: positions prompt-1 onwards.
        self._onpolicy_mask = (np.arange(cfg.seq_len) >= _prompt_len(cfg) - 1).astype(np.float32)

    def batch(self, step: int) -> tuple[dict[str, Any], bool]:
        """The batch of optimizer step `step` (a pure function of seed and step)."""
        cfg = self.cfg
        idx = batch_rows(len(self.rows), step, cfg.batch_size, cfg.seed)
        idx = idx[self._local_rows]  # each process reads only the rows of its own devices
        labels = self.rows.take(idx)  # (b, T) int32, read from the shards now
        put = lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x,
                                                               (cfg.batch_size, *x.shape[1:]))
        batch = {"inputs": put(row_inputs(labels, self.bos_id)), "labels": put(labels),
                 "mask": put(np.ones((len(idx), cfg.seq_len), np.float32))}
        if self.cache is not None:
            t = self.cache.targets(idx)
            batch["sparse"] = tuple(put(x) for x in (t.ids, t.logprobs, t.weights))
        onpolicy = is_onpolicy_step(cfg, step)
        if onpolicy:
            key = jax.random.fold_in(jax.random.key(cfg.seed), step)
            seq = self._sample_fn(self.state["params"], batch["inputs"], key)
            batch["inputs"], batch["labels"] = seq[:, :-1], seq[:, 1:]
            batch["mask"] = put(np.broadcast_to(self._onpolicy_mask, (len(idx), cfg.seq_len)).copy())
        return batch, onpolicy

    # ---- checkpoints ----------------------------------------------------------------------

    def restore_latest(self) -> int:
        """Restore the newest complete checkpoint; returns the next step to run (0 if none)."""
        import orbax.checkpoint as ocp

        step = self.manager.latest_step()
        if step is None:
            return 0
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                              self.state, self.state_shardings)
        self.state = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        return step

    def save(self, step: int) -> None:
        import orbax.checkpoint as ocp

        self.manager.save(step, args=ocp.args.StandardSave(self.state), force=True)
        self.manager.wait_until_finished()

    # ---- the loop -----------------------------------------------------------------------------

    def run(self, *, start: int = 0,
            progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, float]:
        cfg = self.cfg
        from tensorboardX import SummaryWriter

        metrics_path, main = self.out / "metrics.jsonl", is_main_process()  # process 0 writes them
        if main:
            _truncate_metrics(metrics_path, start)
            board = SummaryWriter(str(self.out / "tensorboard"), purge_step=start + 1 if start else None)
        last: dict[str, float] = {}
        tokens_per_step, schedule = cfg.batch_size * cfg.seq_len, lr_schedule(cfg)
        timed, seconds = 0, 0.0  # training throughput: no compiling first step, no eval/checkpoints
        for step in range(start, cfg.steps):
            t = time.perf_counter()
            batch, onpolicy = self.batch(step)
            self.state, metrics = self._step_fn(self.state, self.teacher_params, batch)
            record = {"step": step + 1, "lr": float(schedule(step)), "onpolicy": onpolicy,
                      **{k: float(v) for k, v in metrics.items()}}  # float() waits for the step
            if step > start:
                timed, seconds = timed + 1, seconds + time.perf_counter() - t
                record["tokens_per_s"] = timed * tokens_per_step / seconds
            if self.eval_windows is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                student = self.student_for_eval()  # every process gathers; process 0 scores
                if main:
                    record["heldout_ppl"] = evaluate(student, self.eval_windows).perplexity
            if main:
                _append_metrics(metrics_path, record)
                for k, v in record.items():
                    if k != "step":
                        board.add_scalar(k, float(v), step + 1)
            last = record
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                self.save(step + 1)
            if progress:
                progress(step + 1, cfg.steps, record)
        if main:
            board.close()
        return last

    def student_for_eval(self) -> Transformer:
        """The current student on the host, computing in float32, seen through the view (every
        process must call it)."""
        params = model_params(self.cfg, to_host(self.state["params"]), self.view)
        return set_compute_dtype(nnx.merge(self.graphdef, params), jnp.float32)

    def weights_and_view(self) -> tuple[Transformer, Any]:
        """(the student with its own trained weights, the view's arrays) on the host (every
        process must call it)."""
        params = to_host(self.state["params"])
        if self.view is None:
            return nnx.merge(self.graphdef, params), None
        return nnx.merge(self.graphdef, params["weights"]), params["view"]


# ---- the trainer's parts ----------------------------------------------------------------------

def _mesh(cfg: TrainConfig) -> Mesh:
    """The ('data', 'fsdp') mesh, once a batch splits evenly over its processes, devices and
    micro-batches."""
    check_process_split(cfg.batch_size, jax.process_count())
    mesh = make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
    if jax.process_count() > 1 and mesh.size != jax.device_count():
        raise NanoError(f"mesh data={cfg.mesh_data} x fsdp={cfg.mesh_fsdp} uses {mesh.size} of {jax.device_count()} devices; a multi-process run needs them all: fix mesh_data/mesh_fsdp in the config")
    if cfg.batch_size % (mesh.size * cfg.grad_accum) and mesh.size > 1:
        raise NanoError(f"batch_size {cfg.batch_size} must split over {mesh.size} devices x {cfg.grad_accum} micro-batches")
    return mesh


def check_process_split(batch_size: int, processes: int) -> None:
    """Each process feeds an equal block of every batch."""
    if batch_size % processes:
        raise NanoError(f"batch_size {batch_size} does not split over {processes} processes (--num-processes); use a multiple of {processes}")


def _teacher(cfg: TrainConfig, teacher_ckpt: Path | None, vocab_size: int) -> tuple[Any, Any]:
    """(graphdef, params) of the online teacher, or (None, {}) without one."""
    if teacher_ckpt is None:
        return None, {}
    teacher = load_checkpoint(teacher_ckpt, dtype=cfg.compute_jnp_dtype)
    # A larger teacher vocabulary is fine (Gemma 3 4B+: 64 padding rows): see shared_vocab_logits.
    if teacher.config.vocab_size < vocab_size:
        raise NanoError(f"teacher {teacher_ckpt} has a {teacher.config.vocab_size:,}-token vocabulary but student {_student_name(cfg)} has {vocab_size:,}; pick a student with at most the teacher's vocabulary")
    return nnx.split(teacher, nnx.Param)


def _student_name(cfg: TrainConfig) -> str:
    return f"checkpoint {cfg.init}" if cfg.init else f"preset {cfg.student!r}"


def _check_init(cfg: TrainConfig, tokenizer) -> None:
    """The --init checkpoint must use the teacher's tokenizer (hence its vocabulary)."""
    if not cfg.init:
        return
    from nano.checkpoint import load_config

    init = Path(cfg.init)
    config = load_config(init)  # a NanoError if it is not a checkpoint
    if config.vocab_size < tokenizer.vocab_size:
        raise NanoError(f"--init {init}: its vocabulary has {config.vocab_size:,} tokens but the teacher's tokenizer has {tokenizer.vocab_size:,}; start from a checkpoint with the teacher's vocabulary")
    sha = load_meta(init).get("tokenizer_sha256")
    if sha is None and (init / "tokenizer.model").is_file():
        sha = load_tokenizer(init).sha256
    if sha != tokenizer.sha256:
        raise NanoError(f"--init {init}: its tokenizer ({sha or 'none'}) differs from the teacher's ({tokenizer.sha256}); start from a checkpoint made with the teacher's tokenizer")


def _check_cache_vocab(cfg: TrainConfig, cache, vocab_size: int) -> None:
    if cache is not None and cache.manifest["vocab_size"] != vocab_size:
        raise NanoError(f"{cache.path}: teacher cache has a {cache.manifest['vocab_size']:,}-token vocabulary but student {_student_name(cfg)} has {vocab_size:,}")


def _place(tree: Any, mesh: Mesh) -> tuple[Any, Any]:
    """(shardings, `tree` put on the devices with them)."""
    shardings = tree_shardings(tree, mesh)
    return shardings, put_global(tree, shardings)


def _checkpoint_manager(out: Path):
    """Orbax manager of `out/checkpoints`, keeping the two newest."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager((out / "checkpoints").absolute(),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _prompt_len(cfg: TrainConfig) -> int:
    """Tokens of a row that prompt an on-policy sample: the first half."""
    return cfg.seq_len // 2


def _sampler(cfg: TrainConfig, graphdef, sharding, view: WeightView | None) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """Jitted `(params, inputs (B, T), key) -> (B, T+1)`: the prompt, then the student's sample."""
    prompt = _prompt_len(cfg)

    def sample_batch(params, inputs, key):
        from nano.generate import sample_continuations

        return sample_continuations(nnx.merge(graphdef, model_params(cfg, params, view)), inputs[:, :prompt],
                                    length=cfg.seq_len - prompt + 1, key=key,
                                    temperature=cfg.onpolicy_temperature)

    return jax.jit(sample_batch, out_shardings=sharding)


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _truncate_metrics(path: Path, keep_through: int) -> None:
    """On resume, drop records past the restored step so the curve is never duplicated."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = []
    for ln in lines:
        try:
            if json.loads(ln)["step"] <= keep_through:
                kept.append(ln)
        except (json.JSONDecodeError, KeyError):
            break  # a torn last line from a kill
    from nano.atomic import atomic_file

    with atomic_file(path, "w") as f:
        f.write("".join(k + "\n" for k in kept))


def _teacher_cache_manifest(path: str) -> dict[str, Any] | None:
    """The manifest if `path` is a teacher cache, else None (a checkpoint or a shortcut)."""
    from distill.teacher_cache import FORMAT, MANIFEST

    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


TOPOLOGY = "run.json"  # the processes and devices a run trains on


def _topology() -> dict[str, int]:
    return {"processes": jax.process_count(), "devices": jax.device_count()}


def _check_topology(out: Path) -> None:
    """--resume on the processes and devices the run started on: other counts would feed each
    device other rows and reduce in another order, so the curve would not continue exactly."""
    path = out / TOPOLOGY
    saved = read_json(path, missing=f"{path}: missing") if path.is_file() else {"processes": 1}  # older runs: one process
    current = _topology()
    if any(saved[k] != current[k] for k in saved):
        raise NanoError(f"{path}: the run started on {saved['processes']} process(es) with {saved.get('devices', 'unrecorded')} devices, this --resume has {current['processes']} with {current['devices']}; resume with the same --num-processes and devices per process or choose another --out")


@dataclasses.dataclass
class Run:
    """A validated, ready-to-train run: every check has passed before the first step."""

    cfg: TrainConfig
    out: Path
    trainer: Trainer
    start: int
    tokenizer: Any

    def train(self, progress: Callable[[int, int, dict[str, float]], None] | None = None, *,
              write_student: Callable[[Transformer, Any, Path, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train to the end, then write `out/student` (process 0): a Nano checkpoint, or what
        `write_student(model, view arrays, path, meta)` writes (e.g. a quantized checkpoint after
        quantization-aware training)."""
        last = self.trainer.run(start=self.start, progress=progress)
        meta = {"distilled_from": str(self.cfg.teacher), "train_config": dataclasses.asdict(self.cfg)}
        if write_student is not None:
            model, view = self.trainer.weights_and_view()
            if is_main_process():
                write_student(model, view, self.out / "student", meta)
        else:
            student = self.trainer.student_for_eval()
            if is_main_process():
                save_checkpoint(self.out / "student", student, tokenizer=self.tokenizer, overwrite=True, meta=meta)
        return {"steps": self.cfg.steps, "resumed_from": self.start, **last}


def start_run(cfg: TrainConfig, out: str | Path, *, resume: bool = False, view: WeightView | None = None) -> Run:
    """Check everything (config, teacher, vocabularies, data) and build the trainer; nothing
    is written to `out` until all checks pass. `view`: see `WeightView` (required with `cfg.qat`)."""
    if cfg.qat and view is None:
        raise NanoError("distill config: qat needs the quantized grid as a WeightView (`nano distill --qat` builds it)")
    from nano.convert import resolve_teacher
    from nano.data.prepare import prepare_default
    from nano.data.shards import TokenSplit, eval_windows

    out, cfg = Path(out), cfg.resolved()  # the saved config names the dtype the run used
    cfg_path = out / "train_config.json"
    if cfg_path.is_file():
        if not resume:
            raise NanoError(f"{out}: a run already lives here; pass --resume to continue it or choose another --out")
        saved, current = json.loads(cfg_path.read_text()), dataclasses.asdict(cfg)
        # a field added since the run started is at its default there (e.g. freeze_embed)
        saved = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in saved} | saved
        saved["remat"] = current["remat"]  # memory, not values: resume with another setting after an OOM
        if saved != current:
            diff = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
            raise NanoError(f"{cfg_path}: --resume with a different config (fields {diff}); resume with the same settings or choose another --out")
        _check_topology(out)
    from distill.teacher_cache import TeacherCache

    cache = None
    cache_meta = _teacher_cache_manifest(cfg.teacher) if cfg.teacher else None
    if cache_meta is not None:
        if cfg.onpolicy:
            raise NanoError(f"{cfg.teacher}: on-policy distillation needs a teacher checkpoint to score new samples, not a cache")
        if cfg.seq_len != cache_meta["rows"]["seq_len"]:
            raise NanoError(f"{cfg.teacher}: teacher cache rows are {cache_meta['rows']['seq_len']} tokens but --seq-len is {cfg.seq_len}; use the cache's length")
        teacher_ckpt, tok_source = None, Path(cache_meta["teacher"]["checkpoint"])
        if not tok_source.is_dir():
            tok_source = resolve_teacher("gemma3-270m")
        tokenizer = load_tokenizer(tok_source)
        # Batches draw rows from every shard: keep all decoded shards if they fit in ~2 GiB.
        per_shard = cache_meta["rows"]["rows_per_shard"] * cfg.seq_len * cache_meta["targets"]["k"] * 12
        cache = TeacherCache.open(cfg.teacher, tokenizer_sha256=tokenizer.sha256,
                                  keep=max(2, (2 << 30) // max(per_shard, 1)))
        cache.verify()
        data_dir = Path(cfg.data or cache_meta["data"]["dir"])
    else:
        teacher_ckpt = resolve_teacher(cfg.teacher) if cfg.teacher else None
        tok_source = teacher_ckpt or resolve_teacher("gemma3-270m")
        tokenizer = load_tokenizer(tok_source)
        data_dir = Path(cfg.data) if cfg.data else prepare_default(tokenizer)
    _check_init(cfg, tokenizer)
    train = TokenSplit.open(data_dir, "train")
    train.check_tokenizer(load_meta(tok_source).get("tokenizer_sha256", tokenizer.sha256))
    rows = TokenRows(train.tokens, cfg.seq_len)  # the shards stay on disk: a batch reads its rows
    if cache is not None:
        cache.check_data(train.tokens)
        rows = rows.head(cache.num_rows)
    if len(rows) < cfg.batch_size:
        raise NanoError(f"{data_dir}: the train split has {len(rows)} rows of {cfg.seq_len} tokens, fewer than one batch of {cfg.batch_size}; add text or lower --batch-size/--seq-len")
    heldout = TokenSplit.open(data_dir, "heldout")
    windows = eval_windows(heldout.tokens, window=cfg.eval_window, bos_id=tokenizer.bos_id,
                           max_windows=cfg.eval_windows) if cfg.eval_windows else None
    if windows is not None and len(windows) == 0:
        raise NanoError(f"{data_dir}: the heldout split is shorter than one {cfg.eval_window}-token window; add text, lower eval_window or set eval_windows to 0")
    trainer = Trainer(cfg, out, teacher_ckpt=teacher_ckpt, rows=rows, eval_windows=windows,
                      bos_id=tokenizer.bos_id, cache=cache, view=view)
    barrier("nano distill: every process checked the run")  # before process 0 writes into it
    if is_main_process():
        write_json(cfg_path, dataclasses.asdict(cfg))
        write_json(out / TOPOLOGY, _topology())
    start = trainer.restore_latest() if resume else 0
    return Run(cfg=cfg, out=out, trainer=trainer, start=start, tokenizer=tokenizer)

