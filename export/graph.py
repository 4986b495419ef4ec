"""A Nano model's graph as float32 TFLite bytes with LiteRT-LM's `prefill_<T>` and `decode`
signatures, converted *without* its large weights.

Every kernel and the embedding are extra signature inputs, (out, in) like a FULLY_CONNECTED
weight (the embedding (V, D) as it is), so the converter never holds them: it converts nano1 in
~7 s at ~0.9 GiB whatever the weights, and `export.flatbuffer` then turns those inputs into
constants holding the real (float or int4/int8) weights. The kernel inputs are transposed back
inside the JAX function; the converter cancels that transpose against the one FULLY_CONNECTED
needs, so each FULLY_CONNECTED reads its weight input directly. Norm gains are small and stay
constants (`tf.Variable`s frozen by the converter), so it can fold them as before.

The decoder layers are Nano's own nnx Blocks, converted by jax2tf; only the embedding lookup and
the tied head are TensorFlow ops, because the converter turns a JAX gather into GATHER_ND (which
quantizers and LiteRT's int4 kernels do not handle) while `tf.gather` gives a GATHER that
`export.flatbuffer` rewrites into EMBEDDING_LOOKUP. Lookup and head read the same input, hence
one buffer in the file.

A split embedding (`--embed mixed`: the frequent tokens' rows at int8, the rest at int4; a
`nano.qtensor.SplitQTensor`) is two tables, `embed.hot` (K, D) and `embed.cold` (V - K, D), and
`embed.slot` (V,) int32, each token's row in `[hot | cold]`: the lookup reads the slot and takes
the row from the table it falls in (SELECT_V2), the head computes both tables' logits, concatenates
them and GATHERs them back into vocabulary order by the same slots (one V-element gather a step).

Signatures (one shared set of weights once `export.flatbuffer` has bound them):
  inputs   tokens int32 [1, T], input_pos int32 [T], kv_cache_{k,v}_i float32 [1, K, S_i, H]
           (S_i = seq_len; with `ring`, min(window, seq_len) for local layers: a ring written at
           position % S_i, read whole before the chunk is written, so a runner must give a ring
           cache's output its own buffer, not the input's; full caches may be updated in place)
  outputs  logits float32 [1, 1, V], kv_cache_{k,v}_i (the caches with [pos, pos+T) written)
`prefill_<T>` has T tokens, one signature per prefill length, named as LiteRT-LM's converters
name theirs (prefill_8 ... prefill_1024; LiteRT-LM runs every signature whose key starts with
`prefill`, keyed by input_pos's length, and picks them per prompt: export.runtime.plan_prefill);
`decode` has T = 1. The chunk is written at input_pos[0]; LiteRT-LM zero-pads a short chunk's
tokens and positions, so prefill's logits are those of the last real token, at argmax(input_pos)
(LiteRT-LM itself holds the last prompt token back for decode and never reads them). The chunk must fit: input_pos[0] + T <= S.
"""

import logging
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from flax import nnx
from jax.experimental import jax2tf

from nano.config import ModelConfig
from nano.model import abstract_model, cache_context, cache_lengths
from nano.params import is_matrix


def _decoder(config: ModelConfig):
    """(fn, gain names, kernel name -> (in, out) shape) where fn(gains, kernels_t, x, input_pos,
    caches) -> (final-normed h, new caches) takes the kernels transposed, (out, in)."""
    abstract = abstract_model(config)
    graphdef, state = nnx.split((abstract.layers, abstract.final_norm))  # no embedding: TF owns it
    paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    names, shapes = [], {}
    for path, leaf in paths:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        name = ".".join(map(str, ["layers" if keys[0] == 0 else "final_norm", *keys[1:]]))
        names.append(name)
        shapes[name] = tuple(leaf.shape)
    gains = [n for n in names if not is_matrix(n)]
    kernels = {n: shapes[n] for n in names if is_matrix(n)}

    def fn(gain_values, kernels_t, x, input_pos, caches):
        values = dict(zip(gains, gain_values)) | {n: jnp.transpose(w) for n, w in zip(kernels, kernels_t)}
        layers, final_norm = nnx.merge(graphdef, jax.tree.unflatten(treedef, [values[n] for n in names]))
        new, context = [], cache_context(caches)
        for block, cache in zip(layers, caches):
            x, cache = block(x, input_pos, cache, input_pos[0], context=context)
            new.append(cache)
        return final_norm(x), new

    return fn, gains, kernels


EMBED_TABLES = ("embed.hot", "embed.cold")  # a split embedding's inputs (module doc)
EMBED_SLOT = "embed.slot"


class _Graph(tf.Module):
    def __init__(self, config: ModelConfig, gains: Mapping[str, np.ndarray], *, ring: bool, hot_rows: int = 0):
        super().__init__()
        self.config, self.ring, self.hot_rows = config, ring, hot_rows
        fn, names, self.kernels = _decoder(config)
        gains = {n: np.asarray(gains[n], np.float32) for n in names}
        if config.final_softcap is not None:
            # cap * tanh(h @ E.T / cap): dividing the final norm's gain keeps the head a plain
            # matmul on the shared embedding.
            gains["final_norm.scale"] = gains["final_norm.scale"] / np.float32(config.final_softcap)
        self.decoder = jax2tf.convert(fn, with_gradient=False, native_serialization_platforms=("cpu",))
        self.gains = [tf.Variable(gains[n], trainable=False) for n in names]

    def _lookup(self, embed, ids):
        """(T, D) rows of `ids` (T,): one table, or a split one's (hot, cold, slot)."""
        if not self.hot_rows:
            return tf.gather(embed, ids)  # becomes EMBEDDING_LOOKUP
        hot, cold, slot = embed
        k = self.hot_rows
        j = tf.gather(slot, ids)  # (T,) row in [hot | cold]
        rows_hot = tf.gather(hot, tf.minimum(j, k - 1))
        rows_cold = tf.gather(cold, tf.maximum(j - k, 0))
        return tf.where(tf.reshape(j < k, [-1, 1]), rows_hot, rows_cold)

    def _head(self, embed, h):
        """(1, V) logits of h (1, D) on the tied embedding."""
        if not self.hot_rows:
            return tf.matmul(h, embed, transpose_b=True)
        hot, cold, slot = embed
        both = tf.concat([tf.matmul(h, hot, transpose_b=True), tf.matmul(h, cold, transpose_b=True)], axis=1)
        return tf.gather(both, slot, axis=1)  # back into vocabulary order

    def step(self, tokens, input_pos, caches, kernels_t, embed):
        c = self.config
        T = tokens.shape[1]
        x = self._lookup(embed, tf.reshape(tokens, [T]))  # (T, D)
        x = tf.reshape(x * np.float32(math.sqrt(c.d_model)), [1, T, c.d_model])  # (B, T, D)
        pairs = [(caches[2 * i], caches[2 * i + 1]) for i in range(c.num_layers)]
        h, new = self.decoder(self.gains, list(kernels_t), x, input_pos, pairs)
        if T > 1:  # logits of the last real token only: a [1, T, V] output would dwarf the model
            last = tf.argmax(input_pos, output_type=tf.int32)
            h = tf.slice(h, tf.stack([0, last, 0]), [1, 1, c.d_model])
        logits = self._head(embed, tf.reshape(h, [1, c.d_model]))  # (1, V)
        if c.final_softcap is not None:
            logits = tf.tanh(logits) * np.float32(c.final_softcap)
        out = {"logits": tf.reshape(logits, [1, 1, c.vocab_size])}
        for i, (k, v) in enumerate(new):
            out[f"kv_cache_k_{i}"], out[f"kv_cache_v_{i}"] = k, v
        return out

    def signature(self, name: str, T: int, S: int):
        c = self.config
        specs = [tf.TensorSpec([1, T], tf.int32, name="tokens"),
                 tf.TensorSpec([T], tf.int32, name="input_pos")]
        # [1, K, S, H]: LiteRT-LM reads the context length from dim 2; local layers hold a ring
        # of `window` positions when `ring`
        specs += [tf.TensorSpec([1, c.num_kv_heads, n, c.head_dim], tf.float32, name=f"kv_cache_{kv}_{i}")
                  for i, n in enumerate(cache_lengths(c, S, ring=self.ring)) for kv in "kv"]
        specs += [tf.TensorSpec(s[::-1], tf.float32, name=n) for n, s in self.kernels.items()]  # (out, in)
        if self.hot_rows:
            k = self.hot_rows
            specs += [tf.TensorSpec([k, c.d_model], tf.float32, name=EMBED_TABLES[0]),
                      tf.TensorSpec([c.vocab_size - k, c.d_model], tf.float32, name=EMBED_TABLES[1]),
                      tf.TensorSpec([c.vocab_size], tf.int32, name=EMBED_SLOT)]
        else:
            specs.append(tf.TensorSpec([c.vocab_size, c.d_model], tf.float32, name="embed"))
        n_cache, n_kernels = 2 * c.num_layers, len(self.kernels)

        def fn(tokens, input_pos, *rest):
            caches, kernels_t = rest[:n_cache], rest[n_cache:n_cache + n_kernels]
            embed = rest[n_cache + n_kernels:]
            return self.step(tokens, input_pos, caches, kernels_t, embed if self.hot_rows else embed[0])

        fn.__name__ = name  # the signature key
        return tf.function(fn, input_signature=specs, autograph=False).get_concrete_function()


def prefill_signature(T: int) -> str:
    """The key of the prefill signature of T tokens, as LiteRT-LM's converters name it."""
    return f"prefill_{T}"


def convert(config: ModelConfig, gains: Mapping[str, np.ndarray], *, seq_len: int,
            prefill_lens: Sequence[int], ring: bool = False, hot_rows: int = 0) -> bytes:
    """TFLite flatbuffer (builtin ops only) of the model with `gains` (its norm gains, float32,
    named as in Nano) as constants, every weight as a signature input (see the module doc), and a
    `prefill_<T>` signature for each T in `prefill_lens`. `ring`: local layers keep a ring of
    `window` cache positions (`nano.model.cache_lengths`). `hot_rows`: the embedding is split,
    with that many rows in its hot table."""
    graph = _Graph(config, gains, ring=ring, hot_rows=hot_rows)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # tf.function warns once per dotted weight name ("Sanitizing ...")
    try:
        functions = [graph.signature(prefill_signature(T), T, seq_len) for T in sorted(prefill_lens)]
        functions.append(graph.signature("decode", 1, seq_len))
        converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, graph)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()
    finally:
        absl.setLevel(level)
