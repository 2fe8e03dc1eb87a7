"""sdattn: sparse-dense multi-head attention for TensorFlow/Keras.

Sparse query rows attend over dense token embeddings, through only the top-k keys a selector picks.

`import sdattn` stays light: the input containers, generators and loaders (NumPy and SciPy) are
imported at once; the layer, the selectors and the comparison helpers, which need TensorFlow,
on first use of their names (`sdattn.SparseDenseMultiHeadAttention`, ...), so that loading data
never pays for TensorFlow. The Keras classes are registered as soon as Keras is imported (or
at once if it already is), so `keras.saving.load_model` finds them after `import sdattn`.
"""

import importlib
import importlib.abc
import importlib.util
import sys

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


def _register_keras_classes():
    """Imports the layer and the selectors, which registers their Keras classes."""
    importlib.import_module("sdattn.layer")


# Set when Keras was first imported by `sdattn.backend` itself (`import sdattn.backend`, or a
# module that needs it, imported before anything else): the layer needs the backend, so the
# registration waits until the backend module has run to its end (`_register_pending`).
_registration_pending = False


def _initializing(name):
    """Whether the module `name` is being imported right now (its code has not run to the end)."""
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_pending():
    """Registers the Keras classes if Keras's import had to put it off (see above)."""
    global _registration_pending
    if _registration_pending:
        _registration_pending = False
        _register_keras_classes()


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Registers sdattn's Keras classes as soon as Keras itself is imported.

    A `.keras` file names `sdattn>SparseDenseMultiHeadAttention`, which Keras finds only once
    the class is registered: with this hook `import sdattn` then `keras.saving.load_model`
    works, while code that never imports Keras (loading data) never pays for TensorFlow.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # once; and the regular finders find Keras itself
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            global _registration_pending
            exec_module(module)
            if _initializing("sdattn.backend"):
                _registration_pending = True
            else:
                _register_keras_classes()

        spec.loader.exec_module = exec_then_register
        return spec


if "keras" in sys.modules:
    _register_keras_classes()
else:
    sys.meta_path.insert(0, _AfterKerasImport())


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
