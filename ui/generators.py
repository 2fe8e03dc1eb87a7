"""Generator kinds and their parameters as the input panel shows them (a thin adapter over
`sdattn.inputs`, which stays free of Streamlit)."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from sdattn import inputs
from ui import params
from ui.bounded_input import bounded_number_input


@dataclass(frozen=True)
class GeneratorParam:
    """One generator parameter with its default; `widget` draws the matching input."""

    name: str
    default: int | float | str | bool

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()

    def widget(self, key: str):
        """Draws the widget (its value is seeded in session state by the caller)."""
        if isinstance(self.default, bool):
            return st.checkbox(self.label, key=key)
        if isinstance(self.default, int):
            return int(bounded_number_input(
                self.label, min_value=0, max_value=params.MAX_GENERATOR_PARAM, step=1, key=key))
        if isinstance(self.default, float):
            return float(st.number_input(
                self.label, min_value=0.0, step=0.05, format="%.2f", key=key))
        return st.text_input(self.label, key=key)


def visible_kinds() -> list[str]:
    """Generator kinds the app offers (the benchmark-sized ones are left out)."""
    return [kind for kind in inputs.available_generators() if kind not in params.HIDDEN_KINDS]


def descriptions() -> dict[str, str]:
    return inputs.generator_descriptions()


def parameters(kind: str) -> list[GeneratorParam]:
    """The kind's parameters that have a scalar default (list-valued or None ones keep theirs)."""
    return [
        GeneratorParam(name, value)
        for name, value in inputs.generator_defaults(kind).items()
        if isinstance(value, (int, float, str, bool))
    ]
