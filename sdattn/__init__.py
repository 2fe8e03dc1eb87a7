"""sdattn: sparse-dense multi-head attention for TensorFlow/Keras.

Sparse query rows attend over dense token embeddings, through only the top-k keys a selector picks.

`import sdattn` stays light: the input containers, generators and loaders (NumPy and SciPy) are
imported at once; the layer, the selectors and the comparison helpers, which need TensorFlow,
on first use of their names (`sdattn.SparseDenseMultiHeadAttention`, ...), so that loading data
never pays for TensorFlow. Importing a name registers the Keras classes, as `from sdattn import
SparseDenseMultiHeadAttention` before `keras.models.load_model` does.
"""

import importlib

__version__ = "0.1.0"

from sdattn.inputs import (
    Budget,
    Example,
    InputError,
    InputWarning,
    available_generators,
    generate_inputs,
    generator_defaults,
    generator_descriptions,
    is_session_file,
    load_inputs,
    load_session,
    save_inputs,
    save_session,
    validate_example,
    with_selector,
)

# Public names imported on first use, and the module each comes from.
_LAZY = {
    "SparseDenseMultiHeadAttention": "sdattn.layer",
    "AnnSelector": "sdattn.selectors",
    "HybridSelector": "sdattn.selectors",
    "LearnedSelector": "sdattn.selectors",
    "LSHSelector": "sdattn.selectors",
    "SelectionContext": "sdattn.selectors",
    "Selector": "sdattn.selectors",
    "available_selectors": "sdattn.selectors",
    "register_selector": "sdattn.selectors",
    "selector_descriptions": "sdattn.selectors",
    "SelectorRun": "sdattn.comparison",
    "compare_selectors": "sdattn.comparison",
    "k_sweep_table": "sdattn.comparison",
    "per_query_table": "sdattn.comparison",
    "run_selector": "sdattn.comparison",
    "run_selectors": "sdattn.comparison",
    "summary_table": "sdattn.comparison",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sdattn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AnnSelector",
    "Budget",
    "Example",
    "InputError",
    "InputWarning",
    "HybridSelector",
    "LSHSelector",
    "LearnedSelector",
    "SelectionContext",
    "SelectorRun",
    "SparseDenseMultiHeadAttention",
    "Selector",
    "available_generators",
    "available_selectors",
    "generate_inputs",
    "generator_defaults",
    "generator_descriptions",
    "compare_selectors",
    "k_sweep_table",
    "per_query_table",
    "run_selector",
    "run_selectors",
    "summary_table",
    "is_session_file",
    "load_inputs",
    "load_session",
    "register_selector",
    "save_inputs",
    "save_session",
    "selector_descriptions",
    "validate_example",
    "with_selector",
    "__version__",
]
