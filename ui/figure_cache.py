"""Figures shared by every session: a builder called again with equal arguments (arrays compared by
content) returns the figure it built before, so a class on one URL builds each figure once."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

# A figure (and its dict) is at most a few MB under the views' cell budget: 64 of them bound the
# cache to a few hundred MB, and hold the three figures of ~20 recent Playground views.
MAX_FIGURES = 64
_SCALARS = (str, int, float, bool, type(None), np.generic)


class _Unkeyable(TypeError):
    """An argument this cache cannot compare by content: the builder then runs uncached."""


def _feed(value, digest) -> None:
    if isinstance(value, np.ndarray):
        digest.update(f"A{value.shape}{value.dtype.str}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())  # every element: no sampling
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        if all(type(item) is str for item in value):  # labels: one join, not a loop of updates
            digest.update("\x00".join(value).encode("utf-8", "surrogatepass"))
        else:
            for item in value:
                _feed(item, digest)
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            _feed(key, digest)
            _feed(value[key], digest)
    elif isinstance(value, _SCALARS):
        digest.update(f"{type(value).__name__}:{value!r}".encode("utf-8", "surrogatepass"))
    else:
        raise _Unkeyable(type(value).__name__)


def _key(args: tuple, kwargs: dict) -> bytes:
    digest = hashlib.blake2b(digest_size=20)
    _feed(list(args), digest)
    _feed(kwargs, digest)
    return digest.digest()


def _convert_once(figure):
    """Makes `figure.to_dict()` return one dict computed now.

    `st.plotly_chart` calls `to_dict()` on every run of every session: a deep copy of the whole
    figure, then every array to base64; a shared figure needs it once. The dict is shared too:
    read it, never change it (`plotly.io.to_json` only reads it, and drops trace uids it has not).
    """
    as_dict = figure.to_dict()
    object.__setattr__(figure, "to_dict", lambda: as_dict)  # past plotly's attribute guard
    return figure


def shared_figure(builder: Callable) -> Callable:
    """Decorates a figure builder: equal arguments give the very same figure object.

    The figure is shared, so nobody may change it after it is built: `st.plotly_chart` only
    reads it (through `to_dict`, converted once; see `_convert_once`).
    """
    figures: OrderedDict[bytes, object] = OrderedDict()
    lock = threading.Lock()

    @functools.wraps(builder)
    def cached(*args, **kwargs):
        try:
            key = (builder.__qualname__.encode(), _key(args, kwargs))
        except _Unkeyable:
            return builder(*args, **kwargs)
        with lock:
            if key in figures:
                figures.move_to_end(key)
                return figures[key]
        figure = _convert_once(builder(*args, **kwargs))  # unlocked: others go on meanwhile
        with lock:
            figures[key] = figure
            while len(figures) > MAX_FIGURES:
                figures.popitem(last=False)
        return figure

    cached.uncached = builder
    return cached
