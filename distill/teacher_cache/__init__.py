"""Offline teacher-target cache for distillation (`nano distill cache-teacher`).

The teacher runs once over the training rows; its top-k (or sampled) targets are stored per
token, compressed, and reused by every distillation run.
  rows         the token stream cut into training rows, and their model inputs
  fingerprint  content hashes of the teacher weights and the data tokens
  codec        the vocabulary order and the binary format of one shard
  manifest     the cache directory's layout and its resumable manifest
  builder      the teacher pass and `build_cache` (one process, or several sharing the shards)
  reader       `TeacherCache`, the read side for training
"""

from distill.teacher_cache.builder import Progress, build_cache, teacher_targets
from distill.teacher_cache.codec import (LOGPROB_STEP, MAGIC, Q_MAX, Q_MAX_MASK, decode_targets, encode_targets,
                                         full_order, vocab_order)
from distill.teacher_cache.fingerprint import teacher_fingerprint
from distill.teacher_cache.manifest import FORMAT, MANIFEST, REBUILD, VERSION, VOCAB_ORDER, missing_shards
from distill.teacher_cache.reader import TeacherCache
from distill.teacher_cache.rows import row_inputs, training_rows

__all__ = ["FORMAT", "LOGPROB_STEP", "MAGIC", "MANIFEST", "Q_MAX", "Q_MAX_MASK", "REBUILD", "VERSION", "VOCAB_ORDER",
           "Progress", "TeacherCache", "build_cache", "decode_targets", "encode_targets", "full_order", "missing_shards",
           "row_inputs", "teacher_fingerprint", "teacher_targets", "training_rows", "vocab_order"]
