"""Hostile files (issue 17): every class is refused with a short `InputError` naming the file, or
loads when valid, within 5 s and under 1 GiB of peak RSS growth, measured in a child process."""

import bz2
import json
import pathlib
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest

from sdattn.inputs import InputError, generate_inputs, load_inputs, save_inputs
from sdattn.inputs.safe_zip import read_npz_members
from tests import hostile_files
from tests.hostile_files import CASES

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 5.0
RSS_GROWTH_LIMIT = 2**30
MESSAGE_LIMIT = 300
CHILD_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Every case, written and loaded one after another in one child process (see `measure`)."""
    folder = tmp_path_factory.mktemp("hostile")
    completed = subprocess.run(
        [sys.executable, "-m", "tests.hostile_files", "--measure", str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )
    outcomes = {}
    for line in completed.stdout.splitlines():
        outcome = json.loads(line)
        outcomes[outcome["name"]] = outcome
    outcomes["_stderr"] = completed.stderr[-2000:]
    return outcomes


def planted_nnz() -> int:
    return generate_inputs("planted", seed=0).nnz


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_file_is_refused_quickly_in_bounded_memory(case, measured):
    outcome = measured.get(case.name)
    assert outcome is not None, f"the child stopped before {case.name}: {measured['_stderr']}"
    if case.error is None:
        assert outcome["error"] is None, outcome["message"]
        expected = 3 if case.filename.endswith(".mtx") else planted_nnz()
        assert outcome["nnz"] == expected
    else:
        assert outcome["error"] == "InputError", outcome
        message = outcome["message"]
        assert re.search(case.error, message), message
        assert len(message) < MESSAGE_LIMIT, message
        assert case.filename in message, message
    assert outcome["seconds"] < TIME_LIMIT_S, outcome
    assert outcome["rss_growth_bytes"] < RSS_GROWTH_LIMIT, outcome


def test_every_class_of_the_issue_has_a_case():
    kinds = {case.kind for case in CASES}
    assert {"zip method", "zip size", "npy header", "dtype", "bytes, not elements", "dense npy",
            "member count", "text flood", "invalid accepted", "unclear message",
            "message length", "valid"} <= kinds


def test_the_zip_bombs_really_expand_past_one_gib():
    # The cases must test real bombs, not labels on small files. The deflate bomb is one block
    # repeated after full flushes, so one block inflated alone shows what the whole stream gives.
    prefix = hostile_files.npy_header("|u1", (16,))
    stream = hostile_files.deflate_zeros(prefix, hostile_files.BOMB_BYTES)
    first = zlib.decompressobj(-15)
    head = first.decompress(stream, len(prefix) + 1024)
    assert head == prefix + bytes(1024)
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    block.compress(prefix)
    block.flush(zlib.Z_FULL_FLUSH)
    repeated = block.compress(bytes(1 << 24)) + block.flush(zlib.Z_FULL_FLUSH)
    count = (hostile_files.BOMB_BYTES - len(prefix)) >> 24
    assert stream.count(repeated) == count and count * (1 << 24) > 2**30
    alone = zlib.decompressobj(-15)
    assert alone.decompress(repeated, 1 << 25) == bytes(1 << 24) and not alone.eof
    bzip2 = bz2.BZ2Decompressor()
    assert bzip2.decompress(hostile_files._BZIP2_BOMB, max_length=1 << 26)[:len(prefix)] == prefix
    assert len(bzip2.decompress(b"", max_length=1 << 28)) == 1 << 28  # it goes on expanding


# --------------------------------------------------------------------- the bounded readers


def test_safe_zip_reads_what_numpy_writes(tmp_path):
    arrays = {"a": np.arange(12.0).reshape(3, 4), "b": np.array([True, False]),
              "c": np.arange(5, dtype=np.int16), "label": np.array(["x", "yz"])}
    for writer in (np.savez, np.savez_compressed):
        path = tmp_path / f"{writer.__name__}.npz"
        writer(path, **arrays)
        read = read_npz_members(path, kinds="biufU")
        assert sorted(read) == sorted(arrays)
        for key, array in arrays.items():
            np.testing.assert_array_equal(read[key], array)
            assert read[key].dtype == array.dtype
        with pytest.raises(InputError, match="unexpected arrays"):
            read_npz_members(path, kinds="biufU", allowed={"a"})


def test_a_damaged_deflate_member_fails_its_crc(tmp_path):
    content = hostile_files.npy_bytes(np.arange(64, dtype=np.int64))
    member = hostile_files.Member.deflated("data.npy", content)
    member.crc ^= 1
    path = hostile_files.write_zip(tmp_path / "crc.npz", [member])
    with pytest.raises(InputError, match=r"crc\.npz: member 'data\.npy' fails its CRC-32 check"):
        read_npz_members(path)


def test_text_is_parsed_across_chunks_with_exact_line_numbers(tmp_path):
    # ~3 MiB of rows: several chunks; blank and comment lines shift the numbering on the way.
    rows = [f"{i % 50},{i % 7},{(i % 5) + 1}.5" for i in range(400_000)]
    lines = ["row,col,value"] + rows[:150_000] + ["", "# a comment"] + rows[150_000:]
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n")
    example = load_inputs(path)
    assert example.query_shape[1:] == (50, 7)
    # The line of row 390,000 is its index + 1 header + 2 inserted + 1 (1-based).
    lines[390_000 + 3] = "1,2,abc"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"q\.csv, line 390,004, column 3: 'abc' is not a number"):
        load_inputs(path)
    lines[390_000 + 3] = "1,-2,1"
    path.write_text("\r\n".join(lines) + "\r\n")
    with pytest.raises(InputError, match=r"q\.csv, line 390,004: col index -2 is invalid"):
        load_inputs(path)
    raw = ("\n".join(lines[:300_000]) + "\n").encode() + b"1,2,\xff\n"
    path.write_bytes(raw)
    with pytest.raises(InputError, match=r"q\.csv, line 300,001: the file is not UTF-8 text"):
        load_inputs(path)


def test_an_upload_loaded_once_gives_example_and_extras(tmp_path):
    # The app's session bundle: one load_inputs call returns both the example and its config.
    example = generate_inputs("planted", seed=0)
    path = tmp_path / "session.npz"
    config = {"format": "sdattn.session", "version": 1, "sdattn_version": "0.1.0",
              "settings": {"k": "4"}}
    save_inputs(example, path, extras={"config": config, "sdattn_version": "0.1.0"})
    loaded, extras = load_inputs(path, return_extras=True)
    assert loaded.nnz == example.nnz and extras["config"] == config


def test_flipped_bytes_anywhere_in_an_archive_give_input_errors_only(tmp_path):
    # The zip directory is parsed by sdattn itself: damage anywhere (end record, directory,
    # local headers, data) must give an InputError from the internal reader too, which has no
    # catch-all around it.
    buffer = __import__("io").BytesIO()
    save_inputs(generate_inputs("planted", seed=0), buffer)
    original = buffer.getvalue()
    rng = np.random.default_rng(17)
    directory_start = original.rfind(b"PK\x01\x02", 0, original.rfind(b"PK\x05\x06"))
    outcomes = {"refused": 0, "loaded": 0}
    for trial in range(400):
        damaged = bytearray(original)
        # Half the flips land in the directory and end record, where the parser lives.
        low = directory_start - 400 if trial % 2 else 0
        for position in rng.integers(max(low, 0), len(damaged), size=rng.integers(1, 4)):
            damaged[position] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / "damaged.npz"
        path.write_bytes(bytes(damaged))
        try:
            read_npz_members(path, kinds="biufUS")
            load_inputs(path)
            outcomes["loaded"] += 1
        except InputError as error:
            assert "damaged.npz" in str(error) and len(str(error)) < MESSAGE_LIMIT, str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300, outcomes  # a flip in compressed data fails the CRC
