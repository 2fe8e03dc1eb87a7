"""Selectors: the strategies that pick, for every query, the k keys attention will look at.
`base` holds the `Selector` class, its context and the registry; each selector has its own module."""

import importlib
import pkgutil

from sdattn.selectors.base import (
    SelectionContext,
    Selector,
    available_selectors,
    get,
    register_selector,
    selector_descriptions,
    serialize,
)
from sdattn.selectors.top_k import grouped_top_k, masked_top_k, streamed_top_k

# Every other module (or subpackage) here is one selector, registered when imported: adding a
# selector adds its file and nothing else.
_HELPERS = {"base", "top_k", "cpu_top_k", "top_k_kernel", "sparse_cosine", "cosine_kernel"}
for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    if _module not in _HELPERS:
        importlib.import_module(f"{__name__}.{_module}")

from sdattn.selectors.ann import AnnSelector
from sdattn.selectors.cosine import CosineSelector
from sdattn.selectors.dot import DotSelector
from sdattn.selectors.hybrid import HybridSelector
from sdattn.selectors.learned import LearnedSelector
from sdattn.selectors.lsh import LSHSelector
from sdattn.selectors.random import RandomSelector
from sdattn.selectors.window import WindowSelector

__all__ = [
    "AnnSelector",
    "CosineSelector",
    "DotSelector",
    "HybridSelector",
    "LSHSelector",
    "LearnedSelector",
    "RandomSelector",
    "SelectionContext",
    "Selector",
    "WindowSelector",
    "available_selectors",
    "get",
    "grouped_top_k",
    "masked_top_k",
    "register_selector",
    "selector_descriptions",
    "serialize",
    "streamed_top_k",
]
