"""What a model parameter's name says about it: which parameters are weight matrices, and how a
parameter maps to the ``(in, out)`` matrix that quantizers and exporters work on.

Kernels are stored ``(in, out)`` and used as ``x @ w``. The tied embedding is stored
``(vocab, d_model)`` for the lookup; as the LM head it is the ``(d_model, vocab)`` matrix, so
it is quantized and exported in that role (its rows become output channels).
"""

import numpy as np

EMBED = "embed"


def is_matrix(name: str) -> bool:
    """Linear kernels and the tied embedding; norm gains stay float everywhere."""
    return name == EMBED or name.endswith(".kernel")


def as_matrix(name: str, w: np.ndarray) -> np.ndarray:
    """The ``(in, out)`` matrix of parameter ``name`` (a view); its own inverse."""
    return w.T if name == EMBED else w


def matrix_shape(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(in, out)`` of parameter ``name`` stored with ``shape``."""
    return (shape[1], shape[0]) if name == EMBED else (shape[0], shape[1])
