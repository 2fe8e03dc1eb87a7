"""sdattn: sparse-dense multi-head attention for TensorFlow/Keras.

Sparse query rows attend over dense token embeddings, through only the top-k keys a selector picks.
"""

__version__ = "0.1.0"

from sdattn.layer import SparseDenseMultiHeadAttention
from sdattn.selection import Selector, available_selectors

__all__ = [
    "SparseDenseMultiHeadAttention",
    "Selector",
    "available_selectors",
    "__version__",
]
