"""Reproducible session bundles: input, settings, results and sdattn version in one .npz
(`sdattn.save_inputs` with extras); uploading it through the input panel restores the session."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import streamlit as st

import sdattn
from sdattn import inputs
from ui import url_state
from ui.text import literal

FORMAT = "sdattn.session"
VERSION = 1
CONFIG = "config"  # member extra_json.config: the settings, as URL parameters
VERSION_EXTRA = "sdattn_version"  # member extra_json.sdattn_version
RESULT_NAMES = ("indices", "scores", "output")  # members extra.results.<name>
# The settings a bundle restores: the view's, not the input's (the data is in the bundle).
RESTORED_GROUPS = ("item", "model", "query")
APPLIED = "_bundle_applied"  # SHA-256 of the last bundle whose settings were applied
NOT_RESTORED = "_bundle_not_restored"  # its settings that were refused, shown on every rerun


def bundle_bytes(example: inputs.Example, *, settings: Mapping, model: Mapping,
                 input_description: str, results: Mapping[str, np.ndarray]) -> bytes:
    """An sdattn bundle (.npz, no pickles) that reproduces one session.

    Args:
        example: the whole input (every batch item).
        settings: URL parameter → text of the view (batch item, model, query), as
            `ui.url_state.current_settings` gives them; restored on upload.
        model: the layer settings (`ModelSettings.as_dict()`), for people and scripts.
        input_description: where the input came from, one line.
        results: the run's arrays: `indices` int `[H, M, k]`, `scores` float `[H, M, k]`,
            `output` float `[M, Dout]`.

    Returns:
        The bundle's bytes: `load_inputs(..., return_extras=True)` gives back the example and
        the extras `config` (JSON), `sdattn_version` (JSON) and `results.<name>` (arrays).
    """
    config = {
        "format": FORMAT,
        "version": VERSION,
        "sdattn_version": sdattn.__version__,
        "settings": dict(settings),
        "model": dict(model),
        "input": input_description,
    }
    extras = {CONFIG: config, VERSION_EXTRA: sdattn.__version__}
    extras.update({f"results.{name}": np.asarray(results[name]) for name in RESULT_NAMES})
    buffer = io.BytesIO()
    inputs.save_inputs(example, buffer, extras=extras)
    return buffer.getvalue()


def session_config(extras: Mapping) -> dict | None:
    """The bundle's session config, or None when the extras hold none (a plain input bundle)."""
    config = extras.get(CONFIG)
    if (isinstance(config, dict) and config.get("format") == FORMAT
            and isinstance(config.get("settings"), dict)):
        return config
    return None


@st.cache_data(max_entries=8, show_spinner=False)
def _uploaded_config(name: str, digest: str, _payload: bytes) -> dict | None:
    """`session_config` of an upload, cached by content (`digest` stands for `_payload`)."""
    if not name.lower().endswith(".npz"):
        return None
    buffer = io.BytesIO(_payload)
    buffer.name = name
    try:
        _, extras = inputs.load_inputs(buffer, return_extras=True)
    except inputs.InputError:
        return None
    return session_config(extras)


def restore_session(uploaded, input_spec) -> None:
    """Applies an uploaded session bundle's settings, once per bundle; says so in a caption.

    Call it in the input panel, before the model controls and the query picker are drawn.

    Args:
        uploaded: the `UploadedFile` (already read into a valid example).
        input_spec: its `InputSpec` (the digest identifies the bundle).
    """
    config = _uploaded_config(uploaded.name, input_spec.digest, uploaded.getvalue())
    if config is None:
        return
    if st.session_state.get(APPLIED) != input_spec.digest:
        st.session_state[NOT_RESTORED] = url_state.apply_settings(config["settings"])
        st.session_state[APPLIED] = input_spec.digest
    problems = st.session_state.get(NOT_RESTORED) or []
    saved_version = config.get("sdattn_version")  # the file's text: shown escaped
    origin = f"Session bundle (sdattn {literal(saved_version, 40)})"
    if problems:  # one message: "not restored" and "restored" never side by side
        st.warning(f"{origin}: these settings were not restored and keep their current "
                   "values: " + "; ".join(literal(problem, None) for problem in problems)
                   + ". Its other settings were restored.", icon=":material/restore:")
    else:
        st.caption(f":material/restore: {origin}: its settings were restored.")
    if saved_version != sdattn.__version__:
        st.caption(f":material/warning: It was saved by sdattn {literal(saved_version, 40)}; "
                   f"this is {sdattn.__version__}, so the results may differ.")


def download_button(example: inputs.Example, result, input_spec, settings, *,
                    key: str = "download_bundle") -> None:
    """The "Download bundle" button; the bundle is built only when clicked.

    Args:
        example: the whole input the page runs on.
        result: the `RunResult` of the view.
        input_spec: its `InputSpec`.
        settings: the `ModelSettings`.
        key: widget key.
    """
    view_settings = url_state.current_settings(RESTORED_GROUPS)  # captured now, built later

    def data() -> bytes:
        return bundle_bytes(
            example, settings=view_settings, model=settings.as_dict(),
            input_description=input_spec.description,
            results={"indices": result.indices, "scores": result.scores,
                     "output": result.output})

    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_"
                   for ch in (input_spec.kind or input_spec.name or "upload"))
    st.download_button(
        "Download bundle", data=data, file_name=f"sdattn_bundle_{stem}_k{result.k}.npz",
        mime="application/octet-stream", key=key, on_click="ignore",
        icon=":material/inventory_2:", type="primary",
        help="One .npz with the input, these settings, the results (indices, weights, output) "
             "and the sdattn version. Upload it again (Input → Upload a file) to get this very "
             "view back, or load it with `sdattn.load_inputs(path, return_extras=True)`.",
    )
