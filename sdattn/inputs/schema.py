"""The schema of an sdattn bundle's JSON fields (info, metadata, labels, extras), checked field by
field so a tampered bundle is an `InputError` naming the field, the expected and the received.

Internal API (also used by the session loader):
- `decode_json(array, where)`: a uint8 member as JSON (UTF-8; depth and size already bounded).
- `check_bundle_info(info, where, newest)`, `check_metadata(metadata, where)`,
  `check_labels(labels, where, count)`, `check_extra_json(name, payload, where)`.
- `check_version_fields(mapping, where)`: `version` must be a positive integer (not a bool) and
  `sdattn_version` a version string such as "0.1.0", wherever a JSON object carries them.
- `is_version_string(value)`.
"""

from __future__ import annotations

import json
import re

import numpy as np

from sdattn.inputs.example import InputError, _echo

BUNDLE_FORMAT = "sdattn.bundle"
MAX_LABEL_CHARS = 1_024
MAX_NOTE_CHARS = 2_000
# PEP 440-like: digits and dots, then letters/digits with . _ + - separators ("1.2.0rc1+local").
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*([._+-]?[A-Za-z0-9]+)*")
_MAX_VERSION_CHARS = 40


def _kind(value) -> str:
    """The JSON kind of a value, as a person reads it: "a string", "an object", "true"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {_echo(value, 30)}"
    if isinstance(value, str):
        return f"the string {_echo(value, 40)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def decode_json(array: np.ndarray, where: str):
    """The UTF-8 JSON stored in a 1-D uint8 member."""
    if array.ndim != 1:
        raise InputError(f"{where}: has shape {array.shape}; expected 1-D UTF-8 JSON bytes")
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"{where}: is not valid UTF-8 JSON ({_echo(str(error), 80)})") from None


def is_version_string(value) -> bool:
    return (isinstance(value, str) and len(value) <= _MAX_VERSION_CHARS
            and _VERSION.fullmatch(value) is not None)


def check_version_fields(mapping: dict, where: str) -> None:
    """`version`: a positive integer; `sdattn_version`: a version string (when present)."""
    if "version" in mapping:
        version = mapping["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InputError(f"{where}: field 'version' is {_kind(version)}; expected a positive "
                             "integer")
    if "sdattn_version" in mapping and not is_version_string(mapping["sdattn_version"]):
        raise InputError(f"{where}: field 'sdattn_version' is {_kind(mapping['sdattn_version'])}; "
                         "expected a version string such as \"0.1.0\"")


def check_bundle_info(info, where: str, newest: int) -> None:
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{where}: is {_kind(info)}; expected {{\"format\": \"{BUNDLE_FORMAT}\", "
                         "\"version\": ...}")
    if "version" not in info:
        raise InputError(f"{where}: has no field 'version'; expected a positive integer")
    check_version_fields(info, where)
    if info["version"] > newest:
        raise InputError(f"{where}: bundle version {info['version']:,} is newer than this sdattn "
                         f"reads (up to {newest}); expected a bundle from this version")


# Fields sdattn itself writes into metadata, with the JSON types they may hold.
_METADATA_FIELDS = {
    "generator": (str, type(None)),
    "source": (str,),
    "seed": (int, type(None)),
    "params": (dict,),
    "query_format": (str,),
    "keys": (dict, type(None)),
    "batch_index": (int,),
    "notes": (list,),
}
_TYPE_WORDS = {str: "a string", type(None): "null", int: "an integer", dict: "an object",
               list: "a list of strings"}


def check_metadata(metadata, where: str) -> None:
    if not isinstance(metadata, dict):
        raise InputError(f"{where}: is {_kind(metadata)}; expected a JSON object")
    for field, types in _METADATA_FIELDS.items():
        if field not in metadata:
            continue
        value = metadata[field]
        if (isinstance(value, bool) and int in types) or not isinstance(value, types):
            expected = " or ".join(_TYPE_WORDS[kind] for kind in types)
            raise InputError(f"{where}: field '{field}' is {_kind(value)}; expected {expected}")
    for position, note in enumerate(metadata.get("notes", ())):
        if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
            received = (f"{len(note):,} characters long" if isinstance(note, str)
                        else _kind(note))
            raise InputError(f"{where}: note {position} is {received}; expected a string of at "
                             f"most {MAX_NOTE_CHARS:,} characters")
    check_version_fields(metadata, where)


def check_labels(labels, where: str, count: int) -> None:
    """A JSON list of exactly `count` strings of at most `MAX_LABEL_CHARS` characters."""
    if not isinstance(labels, list):
        raise InputError(f"{where}: is {_kind(labels)}; expected a list of {count:,} strings")
    if len(labels) != count:
        raise InputError(f"{where}: has {len(labels):,} labels; expected {count:,}, one per row")
    for position, label in enumerate(labels):
        if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
            received = (f"{len(label):,} characters long" if isinstance(label, str)
                        else _kind(label))
            raise InputError(f"{where}: label {position} is {received}; expected a string of at "
                             f"most {MAX_LABEL_CHARS:,} characters")


def check_extra_json(name: str, payload, where: str) -> None:
    """Extras are the caller's own JSON, but version fields mean the same everywhere."""
    if name == "sdattn_version" and not is_version_string(payload):
        raise InputError(f"{where}: is {_kind(payload)}; expected a version string such as "
                         "\"0.1.0\"")
    if isinstance(payload, dict):
        check_version_fields(payload, where)
