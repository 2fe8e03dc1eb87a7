"""Where the app's input comes from: uploaded files (queries, keys, labels, a session or a .keras
model) turned into one `Example` and an optional trained layer, kept for the whole session.

This is the one seam between the app and `sdattn.load_inputs` / `sdattn.load_session` /
`keras.saving.load_model`: every page asks `input_panel` (through `ui.widgets`) and gets the same
input, until the user changes it. Uploaded files live in `st.session_state` under keys no widget
owns, so a page switch (which drops the state of widgets not drawn) never loses them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import pathlib
import tempfile
import threading
from dataclasses import dataclass

import numpy as np
import streamlit as st

import sdattn
from sdattn import inputs
from sdattn.inputs import safe_zip
from ui import params
from ui.runner import InputSpec, LayerSource, register_layer
from ui.text import literal, shorten

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The shipped session file of the trained demo layer (issue 13, `sdattn.inputs.sessions.
#: DEMO_SESSION`); the app offers "Trained demo layer" weights only when it exists.
DEMO_SESSION = ROOT / "assets" / "realtext" / "demo_session.npz"
#: Set to 1 (or true/yes/on) to accept .keras uploads; `make run` (local use) sets it.
MODEL_UPLOAD_ENV = "SDATTN_ALLOW_MODEL_UPLOAD"

CHOSEN = "_sdattn_source_chosen"  # the user picked the input source (not a URL or a bundle)
PENDING = "_sdattn_upload_files"  # slot → Blob: the files the user uploaded, widget-independent
CURRENT = "_sdattn_upload_input"  # the last good `Loaded` built from them
# Upload slots: (widget key, what it is, accepted extensions).
QUERY, KEYS, FEATURES, QUERY_NAMES, KEY_NAMES, MODEL = (
    "query", "keys", "feature_names", "query_names", "key_names", "model")
WIDGET_KEYS = {
    QUERY: params.UPLOAD, KEYS: "upload_keys", FEATURES: "upload_feature_names",
    QUERY_NAMES: "upload_query_names", KEY_NAMES: "upload_key_names", MODEL: "upload_model",
}
MODEL_LAYER = "model_layer"  # the selectbox choosing the sdattn layer of an uploaded model
QUERY_TYPES = ("npz", "mtx", "csv", "npy")
KEY_TYPES = ("npy", "csv", "npz")
LABEL_TYPES = ("txt", "csv")
MAX_LABEL_BYTES = 20 * 1024 * 1024
LABEL_HEADERS = {"label", "labels", "name", "names", "word", "words", "feature", "features",
                 "query", "queries", "key", "keys", "token", "tokens"}
_MODEL_LOCK = threading.Lock()  # Keras deserialization touches global state


class SourceError(Exception):
    """A problem with the uploaded files; the message is markdown, user text escaped."""


@dataclass(frozen=True)
class Blob:
    """One uploaded file, kept in session state: its name, SHA-256 and bytes."""

    name: str
    digest: str
    payload: bytes = dataclasses.field(repr=False, compare=False)

    @classmethod
    def of(cls, uploaded) -> "Blob":
        payload = uploaded.getvalue()
        return cls(uploaded.name, hashlib.sha256(payload).hexdigest(), payload)

    def getvalue(self) -> bytes:
        return self.payload

    def buffer(self) -> io.BytesIO:
        stream = io.BytesIO(self.payload)
        stream.name = self.name
        return stream

    @property
    def suffix(self) -> str:
        return pathlib.PurePath(self.name).suffix.lower()


@dataclass
class Loaded:
    """The session's input: the example, its spec, the trained layer (if any) and what the main
    area must say about it (markdown, user text escaped)."""

    example: inputs.Example
    spec: InputSpec
    layer: LayerSource | None
    signature: tuple
    notices: list[str] = dataclasses.field(default_factory=list)
    generated_keys: str | None = None  # the "keys are generated" notice, None with real keys
    bundle: Blob | None = None  # a session bundle whose view settings the panel restores


def model_uploads_enabled() -> bool:
    return os.environ.get(MODEL_UPLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _session_api():
    """`(sdattn.is_session_file, sdattn.load_session)`."""
    return sdattn.is_session_file, sdattn.load_session


# ----------------------------------------------------------------------------- cached loaders


@st.cache_resource(max_entries=8, show_spinner=False)
def _session(name: str, digest: str, _payload: bytes):
    """`(example, layer)` of a session file, or None when the file is no session; a session
    that cannot be read raises `SourceError` with the loader's reason."""
    is_session_file, load_session = _session_api()
    stream = io.BytesIO(_payload)
    stream.name = name
    if not is_session_file(stream):
        return None
    stream.seek(0)
    try:
        return load_session(stream)
    except inputs.InputError as error:
        raise SourceError(f"Could not read the session {literal(name)}: "
                          f"{literal(error, 400)}") from None


@st.cache_data(max_entries=8, show_spinner=False)
def _inputs(query_name: str, query_digest: str, keys_name: str | None, keys_digest: str | None,
            _query: bytes, _keys) -> tuple[inputs.Example, dict]:
    """`sdattn.load_inputs` of the query file with the key file (or array), cached by content."""
    stream = io.BytesIO(_query)
    stream.name = query_name
    return inputs.load_inputs(stream, keys=_keys, return_extras=True)


def demo_available() -> bool:
    return DEMO_SESSION.is_file()


@st.cache_resource(show_spinner=False)
def demo_layer() -> LayerSource | None:
    """The shipped trained demo layer, or None when its file is missing or unreadable."""
    try:
        payload = DEMO_SESSION.read_bytes()
        loaded = _session(DEMO_SESSION.name, hashlib.sha256(payload).hexdigest(), payload)
    except (OSError, SourceError):
        return None
    if loaded is None:
        return None
    return LayerSource(digest="demo:" + hashlib.sha256(payload).hexdigest(),
                       name="The trained demo layer", origin="demo", layer=loaded[1])


def demo_blob() -> Blob | None:
    try:
        payload = DEMO_SESSION.read_bytes()
    except OSError:
        return None
    return Blob(DEMO_SESSION.name, hashlib.sha256(payload).hexdigest(), payload)


# ----------------------------------------------------------------------------- keras models


@dataclass(frozen=True, eq=False)
class ModelFile:
    """A loaded .keras model and the sdattn layers inside it, by path (`outer/inner/name`)."""

    model: object
    layers: tuple  # ((path, layer), ...)


def _find_layers(container, prefix=""):
    found = []
    for layer in getattr(container, "layers", None) or []:
        path = prefix + layer.name
        if isinstance(layer, sdattn.SparseDenseMultiHeadAttention):
            found.append((path, layer))
        found.extend(_find_layers(layer, path + "/"))
    return found


def _model_message(name: str, error: Exception) -> str:
    text = str(error)
    if "Lambda" in text and "safe_mode" in text:
        return (f"{literal(name)} was refused by Keras safe mode: it holds a `Lambda` layer, "
                "whose Python code the app will never run. Save the model without `Lambda` "
                "layers (or save the layer with `sdattn.save_session`) and upload that.")
    if "Could not locate" in text or "Unknown" in text or "custom_objects" in text:
        return (f"{literal(name)} needs custom objects the app does not know "
                f"({literal(shorten(text, 160), None)}). Only Keras and sdattn classes can be "
                "loaded; save the layer with `sdattn.save_session` and upload that instead.")
    return (f"{literal(name)} could not be loaded as a Keras model "
            f"({literal(type(error).__name__)}: {literal(shorten(text, 200), None)}).")


@st.cache_resource(max_entries=4, show_spinner=False)
def _model(name: str, digest: str, _payload: bytes) -> ModelFile:
    """`keras.saving.load_model(..., safe_mode=True)`; raises `SourceError` with the reason."""
    try:
        members = set(_zip_directory(name, _payload))
    except inputs.InputError as error:
        if "not a readable .npz archive" not in str(error):  # a zip, but over a limit
            raise SourceError(literal(error, None)) from None
        members = set()
    if "config.json" not in members:
        raise SourceError(f"{literal(name)} is not a Keras archive: a `.keras` file is a zip "
                          "with `config.json` inside, as `model.save('model.keras')` writes.")
    import keras

    with _MODEL_LOCK, tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "model.keras"
        path.write_bytes(_payload)
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as error:  # any failure to deserialize is a message, never a traceback
            raise SourceError(_model_message(name, error)) from error
    layers = tuple(_find_layers(model))
    if not layers:
        raise SourceError(f"{literal(name)} holds no `SparseDenseMultiHeadAttention` layer, "
                          "so there is no sparse-dense attention to show.")
    return ModelFile(model=model, layers=layers)


def _run_model_to_layer(model_file: ModelFile, path: str, layer, example: inputs.Example):
    """The query and value the layer receives when the model runs on `example`, as an Example;
    None when the layer is not called directly by the top-level functional model, or the
    example does not fit the model's inputs."""
    import keras
    import tensorflow as tf

    model = model_file.model
    if "/" in path or not getattr(model, "inputs", None) or not layer._inbound_nodes:
        return None
    node = layer._inbound_nodes[0]
    args = list(node.arguments.args)
    kwargs = node.arguments.kwargs
    query_tensor = args[0] if args else kwargs.get("query")
    value_tensor = args[1] if len(args) > 1 else kwargs.get("value")
    if query_tensor is None or value_tensor is None or len(model.inputs) not in (1, 2):
        return None
    feeds = []
    for position, model_input in enumerate(model.inputs):
        if position == 0:
            dims, data = example.query_dim, (example.to_sparse_tensor()
                                             if getattr(model_input, "sparse", False)
                                             else tf.constant(example.dense_query()))
        else:
            dims, data = example.value_dim, tf.constant(example.value)
        if model_input.shape[-1] != dims:
            return None
        feeds.append(data)
    try:
        with _MODEL_LOCK:
            upto = keras.Model(model.inputs, [query_tensor, value_tensor])
            query, value = upto(feeds if len(feeds) > 1 else feeds[0])
    except Exception:  # the model cannot run on these files: the caller explains the dims
        return None
    if isinstance(query, tf.SparseTensor):
        query = tf.sparse.to_dense(tf.sparse.reorder(query))
    dense = np.asarray(query, np.float32)  # [B, M', Dq']
    value = np.asarray(value, np.float32)  # [B, N', D']
    if dense.ndim != 3 or value.ndim != 3:
        return None
    indices = np.stack(np.nonzero(dense), axis=1).astype(np.int64)
    same_rows = dense.shape[1] == example.num_queries and value.shape[1] == example.num_keys
    return inputs.Example(
        query_indices=indices, query_values=dense[tuple(indices.T)].astype(np.float32),
        query_shape=dense.shape, value=value,
        query_mask=example.query_mask if same_rows else np.ones(dense.shape[:2], bool),
        value_mask=example.value_mask if same_rows else np.ones(value.shape[:2], bool),
        query_labels=example.query_labels if same_rows else None,
        key_labels=example.key_labels if same_rows else None,
        metadata={**example.metadata, "notes": []},
    )


# ----------------------------------------------------------------------------- files → input


def _key_array(blob: Blob):
    """Keys from a `.npz` key file (one array, or a member named value/keys/key/embeddings)."""
    budget = inputs.Budget()
    stream = io.BytesIO(blob.payload)
    try:
        archive = safe_zip.SafeArchive(stream, len(blob.payload), blob.name, budget)
    except inputs.InputError as error:
        if "not a readable .npz archive" in str(error):
            raise SourceError(f"{literal(blob.name)} is not a .npz archive (expected the keys "
                              "saved with `numpy.savez`).") from None
        raise SourceError(literal(error, None)) from None
    infos = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
    for wanted in ("value", "keys", "key", "embeddings", "vectors"):
        if wanted in infos:
            member = wanted
            break
    else:
        if len(infos) != 1:
            raise SourceError(
                f"{literal(blob.name)} holds {len(infos)} arrays "
                f"({literal(', '.join(sorted(infos)[:6]))}); expected one array of keys, or a "
                "member named `value`, `keys` or `embeddings`.")
        member = next(iter(infos))
    if infos[member].file_size > 4 * budget.max_dense_floats + 4096:
        raise SourceError(f"{literal(blob.name)}: the keys are larger than the app's budget "
                          f"of {budget.max_dense_floats:,} floats.")
    try:  # bounded: declared sizes, the dtype allow-list and the byte budget, never a pickle
        return archive.read_array(infos[member].filename, f"{blob.name}, array {member!r}",
                                  kinds="biuf", max_elements=budget.max_dense_floats,
                                  budget_setting="max_dense_floats")
    except inputs.InputError as error:
        raise SourceError(literal(error, None)) from None
    except Exception as error:  # a damaged member
        raise SourceError(f"{literal(blob.name)}: cannot read array {literal(member)} "
                          f"({literal(shorten(error, 160), None)}).") from error


def parse_labels(blob: Blob) -> list[str]:
    """Labels from a text file (one per line) or the first column of a CSV (header optional)."""
    if len(blob.payload) > MAX_LABEL_BYTES:
        raise SourceError(f"{literal(blob.name)} is larger than {MAX_LABEL_BYTES // 2**20} MB; "
                          "expected one short label per line.")
    try:
        text = blob.payload.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SourceError(f"{literal(blob.name)} is not UTF-8 text (byte {error.start}); "
                          "expected one label per line.") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if blob.suffix == ".csv":
        rows = list(csv.reader(lines))
        labels = [row[0].strip() if row else "" for row in rows]
        if labels and labels[0].lower() in LABEL_HEADERS:
            labels = labels[1:]
    else:
        labels = [line.strip() for line in lines]
    if not labels:
        raise SourceError(f"{literal(blob.name)} holds no labels; expected one per line.")
    return labels


def _with_labels(example, files) -> inputs.Example:
    """The example with the uploaded label files applied, after checking their counts."""
    changes, metadata = {}, dict(example.metadata or {})
    query_file = files[QUERY].name if QUERY in files else "the queries"
    keys_file = files[KEYS].name if KEYS in files else "the keys"
    for slot, what, noun, count, target in (
        (FEATURES, "features (Dq)", "feature", example.query_dim, query_file),
        (QUERY_NAMES, "query rows (M)", "query row", example.num_queries, query_file),
        (KEY_NAMES, "keys (N)", "key", example.num_keys, keys_file),
    ):
        if slot not in files:
            continue
        labels = parse_labels(files[slot])
        if len(labels) != count:
            raise SourceError(
                f"{literal(files[slot].name)} has {len(labels):,} labels but "
                f"{literal(target)} has {count:,} {what}: expected one label per {noun}.")
        if slot == FEATURES:
            metadata["feature_labels"] = labels
        elif slot == QUERY_NAMES:
            changes["query_labels"] = labels
        else:
            changes["key_labels"] = labels
    if not changes and metadata == example.metadata:
        return example
    return dataclasses.replace(example, metadata=metadata, **changes)


def compose(files: dict[str, Blob], layer_choice: str | None = None) -> Loaded:
    """Turns the uploaded files into the session's input; raises `SourceError` with the reason.

    Args:
        files: slot → Blob (`QUERY`, `KEYS`, label slots, `MODEL`).
        layer_choice: the path of the model layer the user picked (default: the first).
    """
    notices: list[str] = []
    layer_source = None
    model_file = None
    if MODEL in files:
        blob = files[MODEL]
        model_file = _model(blob.name, blob.digest, blob.payload)
        paths = [path for path, _ in model_file.layers]
        path = layer_choice if layer_choice in paths else paths[0]
        layer = dict(model_file.layers)[path]
        layer_source = LayerSource(digest=f"{blob.digest}:{path}",
                                   name=f"{blob.name}: {path}", origin="model", layer=layer)
    if QUERY not in files:
        if layer_source is not None:
            raise SourceError(
                f"Now upload the input of {literal(layer_source.name)}: queries with "
                f"Dq = {layer_source.query_dim} features and keys of size "
                f"D = {layer_source.value_dim} (or the model's own inputs).")
        raise SourceError("")  # nothing uploaded yet
    query = files[QUERY]
    keys = files.get(KEYS)
    bundle_blob = None
    session = _session(query.name, query.digest, query.payload) if query.suffix == ".npz" else None
    if session is not None:
        example, session_layer = session
        if layer_source is None:
            layer_source = LayerSource(digest=query.digest, name=query.name, origin="session",
                                       layer=session_layer)
        else:
            notices.append(f"{literal(query.name)} is a session file; its inputs are used, and "
                           f"its own layer is replaced by {literal(layer_source.name)}.")
        if keys is not None:
            notices.append(f"{literal(query.name)} is a session file with its own keys, so "
                           f"{literal(keys.name)} was not used.")
        if ((example.metadata or {}).get("session") or {}).get("has_key"):
            notices.append(f"{literal(query.name)} saved keys apart from its values; the app "
                           "attends with key = value, so its scores are not the saved run's.")
    else:
        is_bundle = query.suffix == ".npz" and "bundle_info" in _members(query)
        used_keys = None if is_bundle else keys  # a bundle carries its own keys
        key_arg = None
        if used_keys is not None:
            key_arg = _key_array(keys) if keys.suffix == ".npz" else keys.buffer()
        try:
            example, extras = _inputs(query.name, query.digest,
                                      used_keys.name if used_keys else None,
                                      used_keys.digest if used_keys else None,
                                      query.payload, key_arg)
        except inputs.InputError as error:
            with_keys = f" with keys {literal(keys.name)}" if keys is not None else ""
            raise SourceError(f"Could not read {literal(query.name)}{with_keys}: "
                              f"{literal(error, 400)}") from None
        if is_bundle:
            if keys is not None:
                notices.append(f"{literal(query.name)} is an sdattn bundle with its own keys, so "
                               f"{literal(keys.name)} was not used.")
            if extras:
                bundle_blob = query
    example = _with_labels(example, files)
    if model_file is not None:
        problem = layer_source.dims_problem(example, _files_text(files))
        if problem is not None:
            path = layer_source.name.split(": ", 1)[1]
            inner = _run_model_to_layer(model_file, path, layer_source.layer, example)
            if inner is None or layer_source.dims_problem(inner, "x") is not None:
                raise SourceError(literal(problem, None) + " Upload queries and keys of those "
                                  "sizes, or the model's own inputs (a functional model is then "
                                  "run up to this layer).")
            example = inner
            notices.append(f"The queries and keys are what {literal(layer_source.name)} receives "
                           f"when the model runs on {literal(_files_text(files))}.")
    generated = None
    keys_info = (example.metadata or {}).get("keys") or {}
    if isinstance(keys_info, dict) and keys_info.get("generator") == "random":
        generated = (
            f"**Keys are generated**: no key file was uploaded, so {literal(query.name)} runs "
            f"against **{example.num_keys} seeded standard-normal keys** of size "
            f"D = {example.value_dim}, not data of yours. Upload your keys under "
            "**Keys/values (optional)** in the sidebar: `.npy` `[N, D]` or `[B, N, D]`, a dense "
            "`.csv` (one key per line) or a `.npz`.")
    signature = tuple(sorted((slot, blob.digest) for slot, blob in files.items())) + (
        ("layer", layer_source.digest if layer_source else None),)
    names = [files[slot].name for slot in (QUERY, KEYS, MODEL) if slot in files]
    labels = sum(slot in files for slot in (FEATURES, QUERY_NAMES, KEY_NAMES))
    name = " + ".join(names) + (f" + {labels} label file{'s' * (labels > 1)}" if labels else "")
    digest = hashlib.sha256(repr(signature).encode()).hexdigest()
    spec = InputSpec(source="upload", name=name, digest=digest)
    for note in (example.metadata or {}).get("notes") or []:
        notices.append(literal(note, 200))
    if layer_source is not None:
        register_layer(layer_source)
    return Loaded(example=example, spec=spec, layer=layer_source, signature=signature,
                  notices=notices, generated_keys=generated, bundle=bundle_blob)


def _zip_directory(name: str, payload: bytes) -> dict:
    """The upload's zip directory, read by `sdattn.inputs.safe_zip` (never `zipfile`, which
    builds an object per member before anyone can count them); `InputError` past its limits."""
    return safe_zip.read_zip_directory(io.BytesIO(payload), len(payload), name, inputs.Budget())


def _members(blob: Blob) -> set[str]:
    """Member names without `.npy`; empty when the file is no readable archive (the loader then
    says why)."""
    try:
        return {name.removesuffix(".npy") for name in _zip_directory(blob.name, blob.payload)}
    except inputs.InputError:
        return set()


def _files_text(files) -> str:
    return " and ".join(files[slot].name for slot in (QUERY, KEYS) if slot in files)


# ----------------------------------------------------------------------------- session state


def pending() -> dict[str, Blob]:
    if PENDING not in st.session_state:
        st.session_state[PENDING] = {}
    return st.session_state[PENDING]


def current() -> Loaded | None:
    """The session's last good uploaded input (every page uses it while Upload is chosen)."""
    return st.session_state.get(CURRENT)


def _on_change(slot: str) -> None:
    """An uploader changed: a new file replaces the slot's, an emptied uploader clears it.

    Page switches drop an uploader's state without calling this, so files stay in `PENDING`.
    """
    uploaded = st.session_state.get(WIDGET_KEYS[slot])
    if uploaded is None:
        pending().pop(slot, None)
    else:
        pending()[slot] = Blob.of(uploaded)


def source_chosen() -> None:
    """Callback of the Input radio: from now on Upload was the user's own choice."""
    st.session_state[CHOSEN] = True


def clear() -> None:
    """Forgets every uploaded file and the input built from them (the "Clear uploads" button)."""
    st.session_state[CHOSEN] = True
    st.session_state[PENDING] = {}
    st.session_state.pop(CURRENT, None)
    for key in WIDGET_KEYS.values():
        st.session_state.pop(key, None)


def use_demo_input() -> None:
    """Callback: the trained demo layer's own session becomes the uploaded input."""
    blob = demo_blob()
    if blob is None:
        return
    clear()
    pending()[QUERY] = blob
    st.session_state[params.SOURCE] = "upload"


def _uploader(slot: str, label: str, types, help_text: str):
    uploaded = st.file_uploader(label, type=list(types), key=WIDGET_KEYS[slot], help=help_text,
                                on_change=_on_change, args=(slot,))
    if uploaded is not None:  # also when the change callback did not run (tests, reruns)
        blob = pending().get(slot)
        if blob is None or blob.name != uploaded.name or blob.payload != uploaded.getvalue():
            pending()[slot] = Blob.of(uploaded)


def upload_panel() -> Loaded | None:
    """The upload half of the input panel; returns the session's input, or None.

    Draws the uploaders, the files in use (kept across pages) and any problem; a problem keeps
    the previous input on screen.
    """
    _uploader(QUERY, "Queries, bundle or session", QUERY_TYPES,
              "Sparse queries as a scipy .npz, Matrix Market .mtx, COO .csv (row,col,value) or "
              "dense .npy; or an sdattn bundle (`sdattn.save_inputs`), or a session file "
              "(`sdattn.save_session`: inputs plus a trained layer).")
    _uploader(KEYS, "Keys/values (optional)", KEY_TYPES,
              "Dense key/value tokens: .npy [N, D] or [B, N, D], a dense .csv (one key per "
              "line) or a .npz holding one array. Without it, seeded Gaussian keys are used.")
    with st.expander("Labels (optional)"):
        _uploader(FEATURES, "Feature names (Dq)", LABEL_TYPES,
                  "One name per query feature (column): a text file, one per line, or a CSV "
                  "whose first column holds them.")
        _uploader(QUERY_NAMES, "Query names (M)", LABEL_TYPES, "One name per query row.")
        _uploader(KEY_NAMES, "Key names (N)", LABEL_TYPES, "One name per key token.")
    if model_uploads_enabled():
        _uploader(MODEL, "Keras model (optional)", ("keras",),
                  "A .keras file holding SparseDenseMultiHeadAttention layers, loaded with "
                  "Keras safe mode (no Python code from the file is run).")
    else:
        st.caption(f":material/block: Model uploads (.keras) are disabled on this server. Set "
                   f"`{MODEL_UPLOAD_ENV}=1` to enable them (`make run` does).")
    files = pending()
    layer_choice = None
    if MODEL in files and model_uploads_enabled():
        try:
            model_file = _model(files[MODEL].name, files[MODEL].digest, files[MODEL].payload)
        except SourceError:
            model_file = None
        if model_file is not None:
            paths = [path for path, _ in model_file.layers]
            shapes = {path: LayerSource("", path, "model", layer).summary
                      for path, layer in model_file.layers}
            if st.session_state.get(MODEL_LAYER) not in paths:
                st.session_state[MODEL_LAYER] = paths[0]
            layer_choice = st.selectbox(
                "Layer of the model", paths, key=MODEL_LAYER,
                format_func=lambda path: f"{path} ({shapes[path]})",
                help="Every SparseDenseMultiHeadAttention inside the model (nested models "
                     "too); the app runs the one you pick, with its trained weights.")
    elif MODEL in files:
        files = {slot: blob for slot, blob in files.items() if slot != MODEL}
    previous = current()
    loaded, problem = previous, None
    wanted = tuple(sorted((slot, blob.digest) for slot, blob in files.items()))
    if previous is None or previous.signature[:-1] != wanted or (
            layer_choice is not None and previous.layer is not None
            and not previous.layer.digest.endswith(":" + layer_choice)):
        try:
            loaded = compose(files, layer_choice)
        except SourceError as error:
            problem = str(error)
            if not problem:  # no query file (any more): no input
                loaded = None
                st.session_state.pop(CURRENT, None)
        else:
            st.session_state[CURRENT] = loaded
    elif previous.layer is not None:
        register_layer(previous.layer)
    if files:
        names = ", ".join(f"{literal(blob.name)} ({label})" for slot, label in (
            (QUERY, "queries"), (KEYS, "keys"), (FEATURES, "feature names"),
            (QUERY_NAMES, "query names"), (KEY_NAMES, "key names"), (MODEL, "model"))
            if (blob := files.get(slot)) is not None)
        st.caption(f":material/attach_file: Files in this session: {names}. They stay the input "
                   "of every page until you upload others or clear them.")
        st.button("Clear uploads", key="clear_uploads", on_click=clear, icon=":material/delete:")
    if problem:
        kept = " The previous input is still shown." if loaded is not None else ""
        st.error(problem + kept, icon=":material/error:")
    elif loaded is None:
        st.info("Upload a query file (or a session), or switch to **Generate**.")
    if loaded is not None:
        for note in loaded.notices:
            st.caption(f":material/info: {note}")
    return loaded


def refers_to_missing_upload() -> bool:
    """True when Upload came with the URL (not the user's click) and no file is uploaded yet."""
    return not st.session_state.get(CHOSEN) and not pending() and current() is None
