"""Selectors: the strategies that pick, for every query, the k keys attention will look at.
`base` holds the `Selector` class, its context and the registry; each selector has its own module."""

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

# Importing a selector's module registers it; this order is `available_selectors()`'s order.
from sdattn.selectors.dot import DotSelector
from sdattn.selectors.cosine import CosineSelector
from sdattn.selectors.random import RandomSelector
from sdattn.selectors.window import WindowSelector
from sdattn.selectors.ann import AnnSelector
from sdattn.selectors.lsh import LSHSelector
from sdattn.selectors.hybrid import HybridSelector
from sdattn.selectors.learned import LearnedSelector

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
