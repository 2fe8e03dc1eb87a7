"""sdattn: sparse-dense multi-head attention for TensorFlow/Keras.

Sparse query rows attend over dense token embeddings, through only the top-k keys a selector picks.
"""

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
from sdattn.layer import SparseDenseMultiHeadAttention
from sdattn.selectors import (
    AnnSelector,
    HybridSelector,
    LearnedSelector,
    LSHSelector,
    SelectionContext,
    Selector,
    available_selectors,
    register_selector,
    selector_descriptions,
)

from sdattn.comparison import (
    SelectorRun,
    compare_selectors,
    k_sweep_table,
    per_query_table,
    run_selector,
    run_selectors,
    summary_table,
)

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
