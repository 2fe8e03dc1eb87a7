"""Inputs for sdattn: the `Example` container, synthetic generators, file loaders and validation.
Every loading or validation failure raises `InputError`; nothing is ever unpickled."""

from sdattn.inputs.example import Budget, Example, InputError, InputWarning, validate_example
from sdattn.inputs.generators import (
    available_generators,
    generate_inputs,
    generator_defaults,
    generator_descriptions,
)
from sdattn.inputs.loaders import load_inputs, save_inputs
from sdattn.inputs.sessions import is_session_file, load_session, save_session, with_selector

__all__ = [
    "Budget",
    "Example",
    "InputError",
    "InputWarning",
    "available_generators",
    "generate_inputs",
    "generator_defaults",
    "generator_descriptions",
    "is_session_file",
    "load_inputs",
    "load_session",
    "save_inputs",
    "save_session",
    "validate_example",
    "with_selector",
]
