"""Shareable URL state: every page's settings live in `st.query_params`, so a URL reproduces the
view. A session's first run seeds the widgets from the (validated) URL; `publish` writes back."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAPIException
from streamlit.runtime.scriptrunner import get_script_run_ctx

import sdattn
from sdattn import inputs
from sdattn.walkthrough import BREAK_IT_PRESETS
from ui import generators, params

# Session-state record: the page of the last run, the URL parameters each group wrote, and the
# last published value of every widget key (re-applied when the user switches pages).
RECORD = "_url_state"
MAX_SEED = 2**31 - 1
MAX_POSITION = 1_000_000  # query and batch item: their widgets clamp them to the input
LEARN_PRESETS = ("tiny", *BREAK_IT_PRESETS)


@dataclass(frozen=True)
class Field:
    """One URL parameter and the widget key it seeds.

    Args:
        param: the URL parameter name.
        key: the widget key (`ui.params`); the same as `param` except on the learn page.
        parse: URL text (a list of texts when `many`) to the widget value; raises `ValueError`
            for a value the widget cannot take.
        many: a repeated parameter (a multiselect's list).
    """

    param: str
    key: str
    parse: Callable[[Any], Any]
    many: bool = False


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:  # "3.5", "" and "abc"
            raise ValueError(f"expected an integer in [{low}, {high}]") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer in [{low}, {high}]")
        return value

    return parse


def _choice(options: Callable[[], Any]) -> Callable[[str], Any]:
    """One of `options()` (looked up when parsing: selectors can be registered late)."""

    def parse(text: str):
        by_text = {str(option): option for option in options()}
        if text not in by_text:
            raise ValueError(f"expected one of {', '.join(by_text)}")
        return by_text[text]

    return parse


def _selector_list(texts: list[str]) -> list[str]:
    names = sdattn.available_selectors()
    chosen = list(dict.fromkeys(texts))  # order kept, repeats dropped
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen:
        raise ValueError(f"expected selectors among {', '.join(names)}")
    return chosen


def _generator_value(default):
    """The parser of a generator parameter, by its default's type (as `ui.generators` draws it)."""

    def parse(text: str):
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        if isinstance(default, int):
            return _integer(0, params.MAX_GENERATOR_PARAM)(text)
        if isinstance(default, float):
            try:
                value = float(text)
            except ValueError:
                raise ValueError("expected a number >= 0") from None
            if not math.isfinite(value) or value < 0:
                raise ValueError("expected a finite number >= 0")
            return value
        return str(text)

    return parse


_SEED = _integer(0, MAX_SEED)
_POSITION = _integer(0, MAX_POSITION)
FIELDS = (
    Field(params.SOURCE, params.SOURCE, _choice(lambda: params.SOURCES)),
    Field(params.KIND, params.KIND, _choice(generators.visible_kinds)),
    Field(params.DATA_SEED, params.DATA_SEED, _SEED),
    Field(params.ITEM, params.ITEM, _POSITION),
    Field(params.TOP_K, params.TOP_K, _integer(1, params.MAX_TOP_K)),
    Field(params.HEADS, params.HEADS, _choice(lambda: params.HEAD_OPTIONS)),
    Field(params.KEY_DIM, params.KEY_DIM, _choice(lambda: params.KEY_DIM_OPTIONS)),
    Field(params.SELECTOR, params.SELECTOR, _choice(sdattn.available_selectors)),
    Field(params.WEIGHTS, params.WEIGHTS, _choice(lambda: params.WEIGHT_KINDS)),
    Field(params.SEED, params.SEED, _SEED),
    Field(params.QUERY, params.QUERY, _POSITION),
    Field(params.SELECTORS, params.SELECTORS, _selector_list, many=True),
    # The learn page: the same URL names, its own widget keys.
    Field("preset", params.LEARN_PRESET, _choice(lambda: LEARN_PRESETS)),
    Field("step", params.LEARN_STEP, _choice(lambda: params.LEARN_STEPS)),
    Field(params.DATA_SEED, params.LEARN_DATA_SEED, _SEED),
    Field(params.TOP_K, params.LEARN_TOP_K, _integer(1, params.MAX_TOP_K)),
    Field(params.SELECTOR, params.LEARN_SELECTOR, _choice(sdattn.available_selectors)),
    Field(params.WEIGHTS, params.LEARN_WEIGHTS, _choice(lambda: params.WEIGHT_KINDS)),
    Field(params.SEED, params.LEARN_SEED, _SEED),
    Field(params.QUERY, params.LEARN_QUERY, _POSITION),
)
_PARAM_OF_KEY = {field.key: field.param for field in FIELDS}


# ----------------------------------------------------------------------------- reading


def parse_settings(lookup: Callable[[str, bool], Any]) -> tuple[dict[str, Any], list[str]]:
    """Validates URL-style settings into widget values.

    Args:
        lookup: `lookup(param, many)` returns the raw text (a list of texts when `many`), or
            None when the parameter is absent.

    Returns:
        `(values, problems)`: widget key → value for every valid parameter (the generator's
        parameters only for the chosen kind, and only when the generator accepts them all
        together), and one line per ignored parameter.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in FIELDS:
        raw = lookup(field.param, field.many)
        if raw is None or raw == []:
            continue
        try:
            values[field.key] = field.parse(raw)
        except (ValueError, TypeError) as error:
            problem = f"`{field.param}={raw}` ({error})"
            if problem not in problems:  # the learn page's fields share the URL names
                problems.append(problem)
    kind = values.get(params.KIND, params.DEFAULT_KIND)
    chosen = {}
    for spec in generators.parameters(kind):
        key = params.generator_param_key(kind, spec.name)
        raw = lookup(key, False)
        if raw is None:
            continue
        try:
            chosen[spec.name] = _generator_value(spec.default)(raw)
        except (ValueError, TypeError) as error:
            problems.append(f"`{key}={raw}` ({error})")
    if chosen:
        full = {spec.name: spec.default for spec in generators.parameters(kind)} | chosen
        try:  # the generator has cross-parameter rules (e.g. the needle's N >= M·(1 + decoys))
            inputs.generate_inputs(kind, seed=values.get(params.DATA_SEED, 0), **full)
        except inputs.InputError as error:
            problems.append(f"the {kind} parameters ({error})")
        else:
            values.update({params.generator_param_key(kind, name): value
                           for name, value in chosen.items()})
    return values, problems


def _url_lookup(param: str, many: bool):
    if param not in st.query_params:
        return None
    return st.query_params.get_all(param) if many else st.query_params[param]


def _record() -> dict:
    if RECORD not in st.session_state:
        st.session_state[RECORD] = {"page": None, "groups": {}, "values": {}}
    return st.session_state[RECORD]


def _page() -> str:
    ctx = get_script_run_ctx()
    return ctx.page_script_hash if ctx is not None else ""


def restore() -> None:
    """Seeds widget values before the page draws its widgets; call it first on every run.

    app.py calls it for every page; the input panel and the learn page call it again (a no-op
    then) so that they also work when a page script runs alone.

    On a session's first run, the URL's valid parameters seed the widgets (a bad value is
    ignored, so the widget keeps its default, and a toast says so). When the user switches
    pages, the values last published are seeded again, so settings shared by both pages
    carry over instead of falling back to defaults. Other runs change nothing.
    """
    record = _record()
    page = _page()
    if record["page"] is None:
        values, problems = parse_settings(_url_lookup)
        for key, value in values.items():
            _seed(key, value)
        if problems:
            # A warning on the page, not a toast: a toast vanishes while the page still loads.
            st.warning("Ignored URL settings: " + "; ".join(problems), icon=":material/link_off:")
    elif record["page"] != page:
        for key, value in record["values"].items():
            _seed(key, value)
        stale = {param for group in record["groups"].values() for param in group}
        record["groups"] = {}
        for param in stale:  # the previous page's parameters (navigation usually cleared them)
            if param in st.query_params:
                del st.query_params[param]
    record["page"] = page


def apply_settings(settings: Mapping[str, Any]) -> list[str]:
    """Seeds widgets from saved URL-style settings (a bundle's), with the URL's validation.

    Call it before the widgets it sets are drawn.

    Args:
        settings: URL parameter → text (or list of texts).

    Returns:
        One line per ignored setting.
    """

    def lookup(param, many):
        raw = settings.get(param)
        if raw is None:
            return None
        if many:
            return [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]
        return str(raw)

    values, problems = parse_settings(lookup)
    for key, value in values.items():
        _seed(key, value)
    return problems


def _seed(key: str, value) -> None:
    try:
        st.session_state[key] = value
    except StreamlitAPIException:  # its widget is already drawn in this run: it keeps its value
        pass


# ----------------------------------------------------------------------------- writing


def to_url(value) -> str | list[str]:
    """A widget value as URL text: `true`/`false`, shortest float repr, lists element-wise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return [str(to_url(v)) for v in value]
    if isinstance(value, float):
        return repr(value)
    return str(value)


def publish(group: str, values: Mapping[str, Any], *, carry: Mapping[str, Any] = None) -> None:
    """Writes a group of widget values into the URL, after the widgets are drawn.

    Parameters this group wrote before and no longer has (another kind's generator
    parameters, the generator's after switching to an upload) are removed; parameters of
    other groups are left alone. Nothing is sent when the URL already holds these values.

    Args:
        group: a name for the widgets written together, e.g. `"input"`, `"model"`.
        values: widget key → value; None (no value) leaves the parameter out.
        carry: more widget key → value, kept out of the URL (defaults, to keep it short) but
            carried to the next page like `values`: a widget whose key another page drew
            would otherwise restart at its minimum, not at the value the user saw.
    """
    record = _record()
    wanted = {_PARAM_OF_KEY.get(key, key): to_url(value)
              for key, value in values.items() if value is not None}
    for param in set(record["groups"].get(group, ())) - wanted.keys():
        if param in st.query_params:
            del st.query_params[param]
    for param, text in wanted.items():
        current = (st.query_params.get_all(param) if isinstance(text, list)
                   else st.query_params.get(param))
        if current != text:
            st.query_params[param] = text
    record["groups"][group] = sorted(wanted)
    record["values"].update({key: value for key, value in {**(carry or {}), **values}.items()
                             if value is not None})


def current_settings(groups: tuple[str, ...] | None = None) -> dict[str, str | list[str]]:
    """The URL parameters the page published this session (all groups, or those named)."""
    record = _record()
    names = {param for group, group_params in record["groups"].items()
             if groups is None or group in groups for param in group_params}
    return {param: (st.query_params.get_all(param) if len(st.query_params.get_all(param)) > 1
                    else st.query_params[param])
            for param in sorted(names) if param in st.query_params}
