"""A teacher whose vocabulary is larger than the student's (Gemma 3 4B/12B/27B: 262,208 rows vs
262,144 ids): its logits are restricted to the student's ids before the softmax; a smaller one
is refused."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill.targets import shared_vocab_logits
from distill.train import TrainConfig, Trainer, step_loss
from nano.checkpoint import save_checkpoint
from nano.config import get_preset
from nano.errors import NanoError
from nano.model import Transformer
from tests.conftest import kl_per_position

TINY = get_preset("tiny")  # vocabulary 512
WIDE = dataclasses.replace(TINY, vocab_size=TINY.vocab_size + 3)  # 3 padding rows, as Gemma 3 4B has 64


def test_shared_vocab_logits_keeps_the_first_ids():
    logits = jnp.arange(2 * 3 * 7, dtype=jnp.float32).reshape(2, 3, 7)
    np.testing.assert_array_equal(np.asarray(shared_vocab_logits(logits, 5)), np.asarray(logits)[..., :5])
    np.testing.assert_array_equal(np.asarray(shared_vocab_logits(logits, 7)), np.asarray(logits))
    with pytest.raises(NanoError, match="teacher logits have 7 ids, fewer than the student's 8; use a teacher"):
        shared_vocab_logits(logits, 8)


def test_loss_is_forward_kl_to_the_teacher_softmax_over_the_students_ids():
    """~5 s."""
    student = Transformer(TINY, rngs=nnx.Rngs(0))
    teacher = Transformer(WIDE, rngs=nnx.Rngs(5))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 17)), jnp.int32)
    inputs, labels, mask = tokens[:, :-1], tokens[:, 1:], jnp.ones((2, 16), jnp.float32)
    loss, metrics = step_loss(student, teacher, inputs, labels, mask, None, TrainConfig(student="tiny"))
    sliced = np.asarray(teacher(inputs)[0])[..., :512]  # (B, T, 512): the padding rows dropped by hand
    expected = kl_per_position(sliced, np.asarray(student(inputs)[0])).mean()
    assert abs(float(loss) - expected) < 1e-6 and abs(float(metrics["kl"]) - expected) < 1e-6


ROWS = np.random.default_rng(0).integers(0, 512, (16, 32)).astype(np.uint32)


def _trainer(tmp_path, teacher_config):
    teacher = save_checkpoint(tmp_path / "teacher", Transformer(teacher_config, rngs=nnx.Rngs(5)))
    cfg = TrainConfig(student="tiny", teacher=str(teacher), tokens=4 * 32, seq_len=32, batch_size=4,
                      compute_dtype="float32")
    return Trainer(cfg, tmp_path / "run", teacher_ckpt=teacher, rows=ROWS, eval_windows=None)


def test_trainer_distills_from_a_larger_vocabulary_and_refuses_a_smaller_one(tmp_path):
    """One tiny step: ~10 s."""
    assert np.isfinite(_trainer(tmp_path / "wide", WIDE).run()["loss"])
    narrow = dataclasses.replace(TINY, vocab_size=TINY.vocab_size - 3)
    with pytest.raises(NanoError, match="teacher .* has a 509-token vocabulary but student preset 'tiny' has 512; "
                                        "pick a student with at most the teacher's vocabulary"):
        _trainer(tmp_path / "narrow", narrow)
