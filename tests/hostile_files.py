"""Hostile input files: one generator per class of issue 17's "Why" (zip bombs, npy headers and
dtypes, member counts, text floods, tampered bundles), each with the outcome a safe loader gives.

Files are written to a folder in bounded chunks, so generating a 143 MB flood or a 173 MB zip
directory costs little memory; the deflate bombs are built from one repeated compressed block, so
a 1.25 GiB expansion takes milliseconds. `python -m tests.hostile_files DIR` writes them all.
"""

from __future__ import annotations

import base64
import bz2
import dataclasses
import io
import json
import pathlib
import struct
import sys
import zipfile
import zlib
from typing import Callable

import numpy as np

BOMB_BYTES = 5 * 2**28  # 1.25 GiB: the zip bombs here expand past 1 GiB
FLOOD_LINES = 10_000_000
LONG_LINE_BYTES = 57_000_000
NEWLINE_BYTES = 143_000_000
MANY_MEMBERS = 3_400_000

# bzip2 of a .npy header (|u1, shape (16,)) followed by zeros, BOMB_BYTES in all: 1,077 bytes.
# bzip2 is too slow to build this on every run (8 s), so it is stored; `bzip2_bomb_stream()`
# rebuilds it.
_BZIP2_BOMB = base64.b64decode(
    "QlpoOTFBWSZTWaJf+z4FfkDfoOAQQOQhkAEDQiCvRd8OCAAACCAAdBJTSmjQyaaaHoRo9NTyQRVT1MTTI0ZDACMjSG6K"
    "AKqiQBUAVVE46wFQBSSQjC2lZYXDObpHN094VXVX9p4cq+CdjtDHLXO+M25zfqPaJGTShSg1ONm0h8KPEkAJJJCP5igr"
    "JMprIcE8W+Ar8cgAGAAAAQQABhAJqMhUBLUhUBLmKCskymshwTxb4CvxyAAYAAABBAAGEAmoyFQEtSFQEuYoKyTKayHB"
    "PFvgK/HIABgAAAEEAAYQCajIVAS1IVAS5igrJMprIcE8W+Ar8cgAGAAAAQQABhAJqMhUBLUhUBLmKCskymshwTxb4Cvx"
    "yAAYAAABBAAGEAmoyFQEtSFQEuYoKyTKayHBPFvgK/HIABgAAAEEAAYQCajIVAS1IVAS5igrJMprIcE8W+Ar8cgAGAAA"
    "AQQABhAJqMhUBLUhUBLmKCskymshwTxb4CvxyAAYAAABBAAGEAmoyFQEtSFQEuYoKyTKayHBPFvgK/HIABgAAAEEAAYQ"
    "CajIVAS1IVAS5igrJMprIcE8W+Ar8cgAGAAAAQQABhAJqMhUBLUhUBLmKCskymshwTxb4CvxyAAYAAABBAAGEAmoyFQE"
    "tSFQEuYoKyTKayHBPFvgK/HIABgAAAEEAAYQCajIVAS1IVAS5igrJMprIcE8W+Ar8cgAGAAAAQQABhAJqMhUBLUhUBLm"
    "KCskymshwTxb4CvxyAAYAAABBAAGEAmoyFQEtSFQEuYoKyTKayHBPFvgK/HIABgAAAEEAAYQCajIVAS1IVAS5igrJMpr"
    "IcE8W+Ar8cgAGAAAAQQABhAJqMhUBLUhUBLmKCskymshwTxb4CvxyAAYAAABBAAGEAmoyFQEtSFQEuYoKyTKayHBPFvg"
    "K/HIABgAAAEEAAYQCajIVAS1IVAS5igrJMprIcE8W+Ar8cgAGAAAAQQABhAJqMhUBLUhUBLmKCskymshwTxb4CvxyAAY"
    "AAABBAAGEAmoyFQEtSFQEuYoKyTKayHBPFvgK/HIABgAAAEEAAYQCajIVAS1IVAS5igrJMprIcE8W+Ar8cgAGAAAAQQA"
    "BhAJqMhUBLUhUBLmKCskymshwTxb4CvxyAAYAAABBAAGEAmoyFQEtSFQEuYoKyTKayHBPFvgK/HIABgAAAEEAAYQCajI"
    "VAS1IVAS5igrJMprIcE8W+Ar8cgAGAAAAQQABhAJqMhUBLUhUBLmKCskymshwTxb4CvxyAAYAAABBAAGEAmoyFQEtSFQ"
    "EuYoKyTKayHBPFvgK/HIABgAAAEEAAYQCajIVAS1IVAS5igrJMprIcE8W+Ar8cgAGAAAAQQABhAJqMhUBLUhUBLmKCsk"
    "ymssju0ggAqhWACYAAABAAEEAAYZgKU00kEk2FIJJ4u5IpwoSA25YJ+A"
)
_BZIP2_BOMB_CRC = 3033829857


def bzip2_bomb_stream() -> tuple[bytes, int]:
    """How `_BZIP2_BOMB` was made (slow): (compressed bytes, CRC-32 of the expansion)."""
    header = npy_header("|u1", (16,))
    compressor, crc = bz2.BZ2Compressor(9), zlib.crc32(header)
    parts, left, zeros = [compressor.compress(header)], BOMB_BYTES - len(header), bytes(1 << 24)
    while left:
        step = zeros[: min(left, len(zeros))]
        parts.append(compressor.compress(step))
        crc, left = zlib.crc32(step, crc), left - len(step)
    parts.append(compressor.flush())
    return b"".join(parts), crc


# ------------------------------------------------------------------------------ building blocks


def npy_header(descr: str, shape: tuple, *, version=(1, 0), declared_length: int | None = None) -> bytes:
    """A .npy header as numpy writes it, or with a `declared_length` that lies."""
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"  # numpy's
    length_size = 2 if version == (1, 0) else 4
    padding = -(8 + length_size + len(text) + 1) % 64
    body = (text + " " * padding + "\n").encode("latin1")
    length = len(body) if declared_length is None else declared_length
    return b"\x93NUMPY" + bytes(version) + length.to_bytes(length_size, "little") + body


def npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


def deflate_zeros(prefix: bytes, total: int, fill: bytes = b"\x00") -> bytes:
    """Raw deflate of `prefix` + `fill` bytes, `total` bytes in all, from one repeated block.

    After a full flush the compressor starts afresh, so 16 MiB of zeros compress to the same
    bytes every time: the stream is that block repeated, ~1 KB per MiB of expansion.
    """
    block = 1 << 24
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)]
    zeros = fill * block
    repeated = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(total - len(prefix), block)
    parts.append(repeated * count)
    parts.append(compressor.compress(zeros[:rest]) + compressor.flush(zlib.Z_FINISH))
    return b"".join(parts)


@dataclasses.dataclass
class Member:
    """One zip member: its name, stored bytes, method, and the size the directory declares."""

    name: str
    data: bytes  # as stored in the archive (already compressed for methods 8, 12, 14)
    size: int  # declared uncompressed size
    method: int = 0
    crc: int = 0  # left 0 where the loader must refuse before it could check it

    @classmethod
    def stored(cls, name: str, content: bytes) -> "Member":
        return cls(name, content, len(content), 0, zlib.crc32(content))

    @classmethod
    def deflated(cls, name: str, content: bytes) -> "Member":
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = compressor.compress(content) + compressor.flush()
        return cls(name, data, len(content), 8, zlib.crc32(content))


def _local_header(member: Member) -> bytes:
    name = member.name.encode()
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, member.method, 0, 0, member.crc,
                       min(len(member.data), 0xFFFFFFFF), min(member.size, 0xFFFFFFFF),
                       len(name), 0) + name


def _central_entry(member: Member, offset: int) -> bytes:
    name = member.name.encode()
    extra = b""
    sizes = [member.size, len(member.data), offset]
    if any(value >= 0xFFFFFFFF for value in sizes):
        extra = struct.pack("<2H3Q", 1, 24, *sizes)
        sizes = [0xFFFFFFFF] * 3
    return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, member.method, 0, 0, member.crc,
                       sizes[1], sizes[0], len(name), len(extra), 0, 0, 0, 0, sizes[2]) + name + extra


def _end_records(stream, entries: int, size: int, offset: int) -> None:
    if entries >= 0xFFFF:
        zip64_offset = stream.tell()
        stream.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                                 size, offset))
        stream.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_offset, 1))
    stream.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(entries, 0xFFFF),
                             min(entries, 0xFFFF), size, offset, 0))


def write_zip(path: pathlib.Path, members: list[Member]) -> pathlib.Path:
    """A zip with exactly these members, headers and methods (no zipfile checks in the way)."""
    directory = []
    with open(path, "wb") as stream:
        for member in members:
            offset = stream.tell()
            stream.write(_local_header(member))
            stream.write(member.data)
            directory.append(_central_entry(member, offset))
        start = stream.tell()
        for entry in directory:
            stream.write(entry)
        _end_records(stream, len(members), stream.tell() - start, start)
    return path


def _write_repeated(path: pathlib.Path, unit: bytes, count: int, prefix: bytes = b"") -> pathlib.Path:
    per_write = max(1, (1 << 22) // max(len(unit), 1))
    with open(path, "wb") as stream:
        stream.write(prefix)
        while count > 0:
            step = min(count, per_write)
            stream.write(unit * step)
            count -= step
    return path


def bundle_members(**changes) -> dict[str, bytes]:
    """The .npy members of a small valid bundle (planted, B=1, M=16, N=64), with `changes`
    (raw .npy bytes, or None to drop a member) applied."""
    from sdattn.inputs import generate_inputs, save_inputs

    buffer = io.BytesIO()
    save_inputs(generate_inputs("planted", seed=0), buffer)
    with zipfile.ZipFile(buffer) as archive:
        members = {name[:-4]: archive.read(name) for name in archive.namelist()}
    members.update(changes)
    return {key: value for key, value in members.items() if value is not None}


def json_npy(payload) -> bytes:
    return npy_bytes(np.frombuffer(json.dumps(payload).encode(), dtype=np.uint8))


def _bundle(path: pathlib.Path, extra_members=(), **changes) -> pathlib.Path:
    members = [Member.deflated(f"{key}.npy", data) for key, data in bundle_members(**changes).items()]
    return write_zip(path, members + list(extra_members))


def _zeros_member(name: str, descr: str, shape: tuple) -> Member:
    header = npy_header(descr, shape)
    total = len(header) + int(np.prod(shape)) * np.dtype(descr).itemsize
    return Member(name, deflate_zeros(header, total), total, 8)


# ------------------------------------------------------------------------------ the cases


@dataclasses.dataclass(frozen=True)
class HostileCase:
    """A hostile (or valid) file and what a safe loader does with it.

    Args:
        name: the test id.
        filename: the file's name (its extension picks the format).
        write: writes the file at the given path and returns it.
        error: regex the `InputError` message must match; None means the file must load.
        kind: the class of issue 17's "Why" it stands for.
        keys_file: the file is passed as `keys=` for a small valid csv query.
    """

    name: str
    filename: str
    write: Callable[[pathlib.Path], pathlib.Path]
    error: str | None
    kind: str
    keys_file: bool = False


def _scipy_csr_members(data: Member) -> list[Member]:
    """A 4 x 4 scipy csr layout with 16 entries around `data`, so a loader reads that member."""
    return [Member.stored("format.npy", npy_bytes(np.array("csr"))),
            Member.stored("shape.npy", npy_bytes(np.array([4, 4]))),
            data,
            Member.stored("indices.npy", npy_bytes(np.tile(np.arange(4, dtype=np.int32), 4))),
            Member.stored("indptr.npy", npy_bytes(np.arange(0, 17, 4, dtype=np.int32)))]


def _bzip2_bomb(path):
    # Its header says 16 bytes of uint8; zipfile would inflate all 1.25 GiB to read that header.
    return write_zip(path, _scipy_csr_members(
        Member("data.npy", _BZIP2_BOMB, BOMB_BYTES, 12, _BZIP2_BOMB_CRC)))


def _bzip2_small(path):
    # A valid scipy csr .npz whose members are bzip2: refused by method, whatever the size.
    import scipy.sparse

    stream = io.BytesIO()
    scipy.sparse.save_npz(stream, scipy.sparse.csr_matrix(np.eye(3)), compressed=False)
    with zipfile.ZipFile(stream) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as out:
        for name in source.namelist():
            out.writestr(name, source.read(name))
    return path


def _lzma_bomb(path):
    # LZMA is slow to build; 64 MiB proves the method is refused before anything inflates.
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_LZMA) as archive:
        with archive.open("data.npy", "w", force_zip64=True) as member:
            member.write(npy_header("|u1", (16,)))
            zeros = bytes(1 << 24)
            for _ in range(4):
                member.write(zeros)
    with zipfile.ZipFile(stream) as archive:
        info = archive.getinfo("data.npy")
        data = stream.getvalue()[info.header_offset:]
        local_length = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
        compressed = data[local_length:local_length + info.compress_size]
    return write_zip(path, _scipy_csr_members(Member("data.npy", compressed, info.file_size, 14,
                                                     info.CRC)))


def _deflate_bomb_declared(path):
    header = npy_header("|u1", (BOMB_BYTES - 128,))
    return write_zip(path, [Member("data.npy", deflate_zeros(header, BOMB_BYTES), BOMB_BYTES, 8)])


def _deflate_bomb_lying(path):
    # The directory says 1 MiB; the deflate stream goes on to 1.25 GiB. A scipy csr layout, so
    # the loader reads the member: it must stop at 1 MiB and refuse what keeps coming.
    declared = 1 << 20
    header = npy_header("|u1", (declared - 128,))
    return write_zip(path, [
        Member.stored("format.npy", npy_bytes(np.array("csr"))),
        Member.stored("shape.npy", npy_bytes(np.array([4, declared]))),
        Member("data.npy", deflate_zeros(header, BOMB_BYTES), declared, 8),
        Member.stored("indices.npy", npy_bytes(np.zeros(declared - 128, np.int32))),
        Member.stored("indptr.npy", npy_bytes(np.zeros(5, np.int32))),
    ])


def _npy_header_length(path):
    header = npy_header("<f8", (4, 4), version=(2, 0), declared_length=1_500_000_000)
    return _write_repeated(path, b" " * 4096, 256, prefix=header)


def _npz_header_length(path):
    header = npy_header("<f8", (4, 4), version=(2, 0), declared_length=1_500_000_000)
    return write_zip(path, [Member.stored("format.npy", npy_bytes(np.array("csr"))),
                            Member.stored("shape.npy", npy_bytes(np.array([4, 4]))),
                            Member.deflated("data.npy", header + b" " * (1 << 20))])


def _npz_header_length_bomb(path):
    # The same header length, and 1.5 GB of header really there (spaces), declared honestly.
    header = npy_header("<f8", (4, 4), version=(2, 0), declared_length=1_500_000_000)
    total = 1_500_000_000 + 4096
    return write_zip(path, _scipy_csr_members(
        Member("data.npy", deflate_zeros(header, total, b" "), total, 8)))


def _bundle_long_strings_bomb(path):
    # The case: a bundle extra of |S1500000000 whose 1.5 GB are really there (zeros).
    return _bundle(path, [_zeros_member("extra.s.npy", "|S1500000000", (1,))])


def _npy_long_strings(path):
    return _write_repeated(path, b"\x00" * 4096, 16, prefix=npy_header("|S1500000000", (1,)))


def _bundle_long_strings(path):
    # A bundle extra of 1.5 GB strings whose directory entry claims only its header's size.
    return _bundle(path, [Member.stored("extra.s.npy", npy_header("|S1500000000", (1,)))])


def _bundle_complex_value(path):
    # 36 M elements: under the 50 M element budget, but 576 MB of complex128.
    return _bundle(path, [_zeros_member("value.npy", "<c16", (1, 6000, 6000))], value=None)


def _bundle_int64_members(path):
    # Each member is within the 50 M element budget; together they are 400 + 192 MB of int64.
    return _bundle(path, [_zeros_member("value.npy", "<i8", (1, 1000, 50_000)),
                          _zeros_member("ground_truth.npy", "<i8", (1, 16, 1_500_000))],
                   value=None, ground_truth=None)


def _many_members(path):
    # One local file and MANY_MEMBERS directory entries all pointing at it: 173 MB of directory.
    local = Member.stored("a.npy", npy_bytes(np.zeros(1)))
    with open(path, "wb") as stream:
        stream.write(_local_header(local) + local.data)
        start = stream.tell()
        entry = _central_entry(local, 0)
        left = MANY_MEMBERS
        while left:
            step = min(left, 100_000)
            stream.write(entry * step)
            left -= step
        _end_records(stream, MANY_MEMBERS, stream.tell() - start, start)
    return path


def _members_over_cap(path):
    return write_zip(path, [Member.stored(f"m{index}.npy", npy_bytes(np.zeros(1)))
                            for index in range(1_001)])


def _dense_all_true(path):
    return _write_repeated(path, b"\x01" * 7000, 7000, prefix=npy_header("|b1", (1, 7000, 7000)))


def _long_descr(path):
    return _write_repeated(path, b"\x00", 64, prefix=npy_header("<f8" + "x" * 8999, (2, 2)))


def _long_structured_descr(path):
    descr = [(f"field{index}", "<f8") for index in range(420)]  # a ~9,000 character list descr
    body = (repr({"descr": descr, "fortran_order": False, "shape": (1,)}) + "\n").encode()
    header = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body
    return _write_repeated(path, b"\x00", 4000, prefix=header)


def _text(content: bytes):
    def write(path):
        path.write_bytes(content)
        return path
    return write


def _valid_large_bundle(path):
    value = np.random.default_rng(0).standard_normal((1, 4096, 2048), dtype=np.float32)  # 32 MiB
    return _bundle(path, value=npy_bytes(value), value_mask=npy_bytes(np.ones((1, 4096), bool)),
                   key_labels=None, ground_truth=None)


MTX = b"%%MatrixMarket matrix coordinate real general\n"
SYMMETRIC = b"%%MatrixMarket matrix coordinate real symmetric\n"
MARKUP_VERSION = "0.1.0`![x](http://127.0.0.1:9/p.png)`"
SESSION_CONFIG = {"format": "sdattn.session", "version": 1, "sdattn_version": "0.1.0",
                  "settings": {"k": "4"}}

CASES = [
    # --- zip compression methods and declared sizes
    HostileCase("bzip2_bomb", "bomb.npz", _bzip2_bomb,
                r"bomb\.npz: member 'data\.npy' is compressed with bzip2 \(zip method 12\)", "zip method"),
    HostileCase("bzip2_small", "small.npz", _bzip2_small,
                r"bzip2 \(zip method 12\); expected stored or deflate", "zip method"),
    HostileCase("lzma_bomb", "lzma.npz", _lzma_bomb, r"LZMA \(zip method 14\)", "zip method"),
    HostileCase("deflate_bomb_declared", "deflate.npz", _deflate_bomb_declared,
                r"declares 1,342,177,280 bytes uncompressed, over the byte budget", "zip size"),
    HostileCase("deflate_bomb_lying", "lying.npz", _deflate_bomb_lying,
                r"member 'data\.npy' inflates past the 1,048,576 bytes its directory entry declares",
                "zip size"),
    # --- npy headers and dtypes
    HostileCase("npy_header_length", "header.npy", _npy_header_length,
                r"declares a 1,500,000,000-byte \.npy header, over the limit of 10,000", "npy header"),
    HostileCase("npz_header_length", "header.npz", _npz_header_length,
                r"array 'data': declares a 1,500,000,000-byte \.npy header", "npy header"),
    HostileCase("npz_header_length_bomb", "header_bomb.npz", _npz_header_length_bomb,
                r"member 'data\.npy' declares 1,500,004,096 bytes uncompressed, over the byte budget",
                "npy header"),
    HostileCase("npy_long_strings", "strings.npy", _npy_long_strings,
                r"strings\.npy: has dtype \|S1500000000; expected bool or integer", "dtype"),
    HostileCase("bundle_long_strings", "strings.npz", _bundle_long_strings,
                r"array 'extra\.s': has dtype \|S1500000000, strings of 1,500,000,000 bytes each",
                "dtype"),
    HostileCase("bundle_long_strings_bomb", "strings_bomb.npz", _bundle_long_strings_bomb,
                r"member 'extra\.s\.npy' declares 1,500,000,128 bytes uncompressed, over the byte "
                r"budget", "dtype"),
    HostileCase("bundle_complex_extra", "complex.npz",
                lambda p: _bundle(p, **{"extra.c": npy_bytes(np.ones(10, np.complex128))}),
                r"array 'extra\.c': has dtype complex128; expected bool or integer", "dtype"),
    HostileCase("bundle_complex_value", "complex_value.npz", _bundle_complex_value,
                r"member 'value\.npy' declares 576,000,128 bytes uncompressed, over the byte budget",
                "bytes, not elements"),
    HostileCase("bundle_int64_members", "int64.npz", _bundle_int64_members,
                r"its 11 members declare 592,003,536 bytes uncompressed, over the byte budget of "
                r"536,870,912", "bytes, not elements"),
    HostileCase("long_descr", "descr.npy", _long_descr,
                r"dtype '<f8xxx.*\(9,004 characters\) is not a numpy dtype", "message length"),
    HostileCase("long_structured_descr", "record.npy", _long_structured_descr,
                r"has a structured dtype \[\('field0'.*characters\); expected bool", "message length"),
    HostileCase("dense_all_true", "dense.npy", _dense_all_true,
                r"dense\.npy has 49,000,000 non-zeros, over the budget of 5,000,000", "dense npy"),
    # --- member counts
    HostileCase("many_members", "many.npz", _many_members,
                r"many\.npz: has 3,400,000 members, over the limit of 1,000", "member count"),
    HostileCase("members_over_cap", "members.npz", _members_over_cap,
                r"has 1,001 members, over the limit of 1,000", "member count"),
    # --- text floods
    HostileCase("csv_many_lines", "flood.csv",
                lambda p: _write_repeated(p, b"0,0,1.5\n", FLOOD_LINES),
                r"flood\.csv: has more than 5,004,096 lines", "text flood"),
    HostileCase("csv_long_line", "line.csv",
                lambda p: _write_repeated(p, b"1", LONG_LINE_BYTES, prefix=b"0,0,"),
                r"line\.csv, line 1: is longer than 1,048,576 bytes", "text flood"),
    HostileCase("csv_newlines", "newlines.csv", lambda p: _write_repeated(p, b"\n", NEWLINE_BYTES),
                r"newlines\.csv: has more than 5,004,096 lines", "text flood"),
    HostileCase("csv_keys_long_line", "keys.csv",
                lambda p: _write_repeated(p, b"1,", LONG_LINE_BYTES // 2),
                r"keys\.csv, line 1: is longer than 1,048,576 bytes", "text flood", keys_file=True),
    HostileCase("mtx_many_lines", "flood.mtx",
                lambda p: _write_repeated(p, b"1 1 1.5\n", FLOOD_LINES, prefix=MTX + b"2 2 5000000\n"),
                r"flood\.mtx: has more than 5,004,096 lines", "text flood"),
    HostileCase("mtx_more_lines_than_declared", "lines.mtx",
                lambda p: _write_repeated(p, b"1 1 1.5\n", 1_000_000, prefix=MTX + b"2 2 1000\n"),
                r"lines\.mtx: the size line declares 1,000 entries but 1,000,000 lines follow",
                "text flood"),
    HostileCase("mtx_long_line", "line.mtx",
                lambda p: _write_repeated(p, b"1", LONG_LINE_BYTES, prefix=MTX + b"2 2 1\n1 1 "),
                r"line\.mtx, line 3: is longer than 1,048,576 bytes", "text flood"),
    HostileCase("mtx_newlines", "newlines.mtx",
                lambda p: _write_repeated(p, b"\n", NEWLINE_BYTES, prefix=MTX + b"2 2 1\n1 1 1\n"),
                r"newlines\.mtx: has more than [0-9,]+ lines", "text flood"),
    # --- accepted although invalid, and unclear messages
    HostileCase("mtx_symmetric_not_square", "sym.mtx", _text(SYMMETRIC + b"3 4 1\n1 1 1.5\n"),
                r"sym\.mtx, line 2: a symmetric matrix must be square; the size line declares 3 x 4",
                "invalid accepted"),
    HostileCase("mtx_symmetric_out_of_range", "sym.mtx", _text(SYMMETRIC + b"3 3 2\n1 1 1.5\n4 1 2\n"),
                r"sym\.mtx, line 4: row index 4 is invalid; expected an integer from 1 to 3",
                "unclear message"),
    HostileCase("labels_object", "labels.npz",
                lambda p: _bundle(p, query_labels=json_npy({"a": "q0"})),
                r"labels\.npz, array 'query_labels': is an object; expected a list of 8 strings",
                "invalid accepted"),
    HostileCase("labels_too_long", "labels.npz",
                lambda p: _bundle(p, key_labels=json_npy(["k" * 5000] + [f"k{i}" for i in range(1, 64)])),
                r"array 'key_labels': label 0 is 5,000 characters long", "invalid accepted"),
    HostileCase("version_true", "version.npz",
                lambda p: _bundle(p, bundle_info=json_npy({"format": "sdattn.bundle", "version": True})),
                r"version\.npz, array 'bundle_info': field 'version' is true; expected a positive integer",
                "invalid accepted"),
    HostileCase("version_negative", "version.npz",
                lambda p: _bundle(p, bundle_info=json_npy({"format": "sdattn.bundle", "version": -7})),
                r"array 'bundle_info': field 'version' is the number -7; expected a positive integer",
                "invalid accepted"),
    HostileCase("sdattn_version_markup", "session.npz",
                lambda p: _bundle(p, **{"extra_json.sdattn_version": json_npy(MARKUP_VERSION)}),
                r"array 'extra_json\.sdattn_version': is the string '0\.1\.0`!\[x\].*expected a "
                r"version string", "invalid accepted"),
    HostileCase("config_version_true", "session.npz",
                lambda p: _bundle(p, **{"extra_json.config": json_npy({**SESSION_CONFIG, "version": True})}),
                r"array 'extra_json\.config': field 'version' is true", "invalid accepted"),
    HostileCase("config_sdattn_version_negative", "session.npz",
                lambda p: _bundle(p, **{"extra_json.config": json_npy({**SESSION_CONFIG, "sdattn_version": -7})}),
                r"array 'extra_json\.config': field 'sdattn_version' is the number -7", "invalid accepted"),
    HostileCase("notes_number", "notes.npz", lambda p: _bundle(p, metadata=json_npy({"notes": 5})),
                r"notes\.npz, array 'metadata': field 'notes' is the number 5; expected a list of strings",
                "unclear message"),
    HostileCase("unknown_member", "extra.npz", lambda p: _bundle(p, payload=npy_bytes(np.zeros(3))),
                r"holds member 'payload', which is not part of an sdattn bundle", "invalid accepted"),
    # --- valid files load
    HostileCase("valid_bundle", "valid.npz", _bundle, None, "valid"),
    HostileCase("valid_session_bundle", "session.npz",
                lambda p: _bundle(p, **{"extra_json.sdattn_version": json_npy("0.1.0"),
                                        "extra_json.config": json_npy(SESSION_CONFIG),
                                        "extra.results.indices": npy_bytes(np.zeros((2, 16, 4), np.int32))}),
                None, "valid"),
    HostileCase("valid_symmetric_mtx", "sym.mtx", _text(SYMMETRIC + b"3 3 2\n1 1 1.5\n3 1 2\n"),
                None, "valid"),
    HostileCase("valid_large_bundle", "large.npz", _valid_large_bundle, None, "valid"),
]
CASES_BY_NAME = {case.name: case for case in CASES}


# ------------------------------------------------------------------------------ measuring

SMALL_QUERIES = b"row,col,value\n0,0,1.5\n1,2,0.5\n"


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so each case's peak is its own.
    # Where that is not allowed the peak is not reset, which can only overstate a case's growth
    # (the cases run smallest first, the one large valid load last).
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def measure(names, folder: pathlib.Path):
    """Write each case's file, load it, and yield what happened: outcome, seconds, peak RSS growth.

    Run it in a child process (`python -m tests.hostile_files --measure DIR NAME...`): the
    growth is VmHWM after the load minus VmRSS before it, with VmHWM reset just before.
    """
    import gc
    import time
    import warnings

    from sdattn.inputs import InputError, load_inputs

    warnings.simplefilter("ignore")
    for name in names:
        case = CASES_BY_NAME[name]
        path = case.write(folder / case.filename)
        queries = folder / "queries.csv"
        queries.write_bytes(SMALL_QUERIES)
        gc.collect()
        _reset_peak_rss()
        before = _memory_kib("VmRSS")
        start = time.perf_counter()
        outcome = {"name": name, "error": None, "message": None, "nnz": None}
        try:
            if case.keys_file:
                example = load_inputs(queries, keys=path)
            else:
                example = load_inputs(path)
            outcome["nnz"] = example.nnz
        except InputError as error:
            outcome["error"], outcome["message"] = "InputError", str(error)
        except BaseException as error:  # MemoryError under the child's address-space limit, ...
            outcome["error"], outcome["message"] = type(error).__name__, str(error)[:300]
        outcome["seconds"] = time.perf_counter() - start
        outcome["rss_growth_bytes"] = (_memory_kib("VmHWM") - before) * 1024
        example = None
        path.unlink()
        yield outcome


def _stub_package(root: pathlib.Path) -> None:
    """Import `sdattn.inputs` without `sdattn/__init__` (which imports TensorFlow): the loader
    code is the same, and the child starts in half a second with a small baseline."""
    import types

    package = types.ModuleType("sdattn")
    package.__path__ = [str(root / "sdattn")]
    sys.modules["sdattn"] = package


if __name__ == "__main__":
    root = pathlib.Path(__file__).resolve().parents[1]
    if sys.argv[1] == "--measure":
        import resource

        # A guard that fails must fail the test, not the machine: cap the child's address space.
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
        _stub_package(root)
        folder = pathlib.Path(sys.argv[2])
        for outcome in measure(sys.argv[3:] or list(CASES_BY_NAME), folder):
            print(json.dumps(outcome), flush=True)
    else:
        folder = pathlib.Path(sys.argv[1])
        for case in CASES:
            (folder / case.name).mkdir(parents=True, exist_ok=True)
            print(case.write(folder / case.name / case.filename))
