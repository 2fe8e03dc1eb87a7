"""A bounded reader for .npz archives: the zip central directory is parsed here, not by `zipfile`,
so member count, sizes and compression methods are checked before any member is opened or inflated.

Python's `zipfile` builds an object per member before anyone can count them (3.4 M members cost
1.5 GB) and inflates bzip2 / LZMA members without a limit. This module instead:
- reads the end-of-central-directory record (zip64 too) and refuses more than `MAX_MEMBERS`
  members, or a directory over `MAX_DIRECTORY_BYTES`, before parsing a single entry;
- refuses any member compressed with a method other than stored (0) or deflate (8), the two
  that numpy writes (bzip2 = 12, LZMA = 14, ... are named in the message), encrypted members,
  duplicate names, and declared sizes (each member's, and all together) over the byte budget
  or past the file;
- inflates deflate members with `zlib` in bounded steps, never past the declared size, and
  checks at the end that the stream stops there and that its CRC-32 matches.

Internal API (also used by the session loader):
- `read_zip_directory(stream, file_size, where, budget)` -> `{name: ZipMember}`.
- `SafeArchive(stream, size, where, budget)`: that directory plus the file's `ByteAllowance`,
  with zipfile-like `namelist()` / `infolist()` / `getinfo()` and `read_array(name, ...)`.
- `open_member(stream, member, where)` -> a file-like reader (`read`, `readinto`) of one member.
- `read_npz_members(file, budget, allowed=None, kinds=..., where=None)` -> `{key: ndarray}`: every
  `.npy` member (or only the keys in `allowed`), each through `npy.read_npy` with one shared
  `ByteAllowance`, so the whole archive stays within `Budget.max_bytes`.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib

import numpy as np

from sdattn.inputs.example import Budget, DEFAULT_BUDGET, InputError, _echo
from sdattn.inputs.npy import ByteAllowance, read_npy

# A .npz with more members than this is not a bundle or a scipy matrix; refusing it bounds the work.
MAX_MEMBERS = 1_000
MAX_DIRECTORY_BYTES = 4 * 2**20  # 1,000 entries of 4 KiB: names and extra fields included
MAX_NAME_BYTES = 1_024
STORED, DEFLATED = 0, 8
METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "LZMA", 93: "zstd",
                95: "xz", 98: "PPMd", 99: "AES encryption"}
_READ_STEP = 1 << 16  # compressed bytes fed to zlib per step

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")


@dataclasses.dataclass(frozen=True)
class ZipMember:
    """One central-directory entry, as declared (checked against the budget, not yet read)."""

    name: str
    method: int
    flags: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int

    # zipfile.ZipInfo's names, so code written against zipfile reads the same.
    @property
    def filename(self) -> str:
        return self.name

    @property
    def file_size(self) -> int:
        return self.size

    @property
    def compress_size(self) -> int:
        return self.compressed_size


def _bad_archive(where: str, problem: str) -> InputError:
    return InputError(
        f"{where}: not a readable .npz archive ({problem}); expected a file written by "
        "numpy.savez, scipy.sparse.save_npz or sdattn.save_inputs"
    )


def _read_at(stream, offset: int, count: int, where: str) -> bytes:
    stream.seek(offset)
    data = stream.read(count)
    if len(data) != count:
        raise _bad_archive(where, f"truncated at byte {offset + len(data):,}")
    return data


def read_zip_directory(stream, file_size: int, where: str,
                       budget: Budget = DEFAULT_BUDGET) -> dict[str, ZipMember]:
    """The members of a zip archive from its central directory, all checked before any is read.

    Args:
        stream: seekable binary stream of the whole archive.
        file_size: its size in bytes.
        where: the file name, for messages.
        budget: `max_bytes` bounds each member's declared (uncompressed) size.

    Returns:
        `{member name: ZipMember}` in directory order.

    Raises:
        InputError: not a zip, too many members, a refused method, encryption, duplicate names,
            or sizes and offsets that do not fit the file or the budget.
    """
    tail_size = min(file_size, _EOCD.size + 0xFFFF)
    tail = _read_at(stream, file_size - tail_size, tail_size, where)
    # The end record is the last "PK\5\6" whose comment length reaches exactly the end of the file.
    position = tail.rfind(b"PK\x05\x06")
    while position >= 0:
        if position + _EOCD.size <= tail_size:
            comment_length = struct.unpack_from("<H", tail, position + 20)[0]
            if position + _EOCD.size + comment_length == tail_size:
                break
        position = tail.rfind(b"PK\x05\x06", 0, position)
    if position < 0:
        raise _bad_archive(where, "no end-of-central-directory record")
    (_, disk, directory_disk, _, entries, directory_size, directory_offset,
     _) = _EOCD.unpack_from(tail, position)
    record_offset = file_size - tail_size + position
    if (disk, directory_disk) != (0, 0):
        raise _bad_archive(where, "a multi-disk archive")
    if entries == 0xFFFF or directory_size == 0xFFFFFFFF or directory_offset == 0xFFFFFFFF:
        locator_offset = record_offset - _ZIP64_LOCATOR.size
        if locator_offset < 0:
            raise _bad_archive(where, "a zip64 archive without its locator")
        signature, _, zip64_offset, _ = _ZIP64_LOCATOR.unpack(
            _read_at(stream, locator_offset, _ZIP64_LOCATOR.size, where))
        if signature != b"PK\x06\x07" or zip64_offset + _ZIP64_EOCD.size > locator_offset:
            raise _bad_archive(where, "a damaged zip64 locator")
        fields = _ZIP64_EOCD.unpack(_read_at(stream, zip64_offset, _ZIP64_EOCD.size, where))
        if fields[0] != b"PK\x06\x06":
            raise _bad_archive(where, "a damaged zip64 end record")
        entries, directory_size, directory_offset = fields[7], fields[8], fields[9]
        record_offset = zip64_offset
    if entries > MAX_MEMBERS:
        raise InputError(
            f"{where}: has {entries:,} members, over the limit of {MAX_MEMBERS:,}; expected a "
            "bundle or sparse matrix (a few dozen arrays)"
        )
    if directory_size > MAX_DIRECTORY_BYTES:
        raise InputError(
            f"{where}: its zip directory is {directory_size:,} bytes, over the limit of "
            f"{MAX_DIRECTORY_BYTES:,}; expected a bundle or sparse matrix"
        )
    if directory_offset + directory_size != record_offset:
        raise _bad_archive(where, "the central directory is not where its end record says")
    directory = _read_at(stream, directory_offset, directory_size, where)
    members: dict[str, ZipMember] = {}
    cursor = 0
    for _ in range(entries):
        if cursor + _CENTRAL.size > len(directory):
            raise _bad_archive(where, "the central directory is shorter than its entry count")
        (signature, _, _, flags, method, _, _, crc, compressed_size, size, name_length,
         extra_length, comment_length, _, _, _, header_offset) = _CENTRAL.unpack_from(
            directory, cursor)
        if signature != b"PK\x01\x02":
            raise _bad_archive(where, f"a damaged directory entry at byte {directory_offset + cursor:,}")
        name_start = cursor + _CENTRAL.size
        extra_start = name_start + name_length
        cursor = extra_start + extra_length + comment_length
        if cursor > len(directory) or name_length > MAX_NAME_BYTES:
            raise _bad_archive(where, "a directory entry runs past the directory")
        raw_name = directory[name_start:extra_start]
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
        if 0xFFFFFFFF in (size, compressed_size, header_offset):
            size, compressed_size, header_offset = _zip64_sizes(
                directory[extra_start:extra_start + extra_length], size, compressed_size,
                header_offset, where, name)
        member = ZipMember(name=name, method=method, flags=flags, crc=crc,
                           compressed_size=compressed_size, size=size, header_offset=header_offset)
        _check_member(member, where, budget, directory_offset)
        if name in members:
            raise InputError(f"{where}: member {_echo(name)} appears twice; expected unique names")
        members[name] = member
    total = sum(member.size for member in members.values())
    if total > budget.max_bytes:
        raise InputError(
            f"{where}: its {len(members):,} members declare {total:,} bytes uncompressed, over "
            f"the byte budget of {budget.max_bytes:,}; expected a smaller file, or raise "
            "Budget.max_bytes"
        )
    return members


def _zip64_sizes(extra: bytes, size, compressed_size, header_offset, where, name):
    cursor = 0
    while cursor + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, cursor)
        body = extra[cursor + 4:cursor + 4 + length]
        cursor += 4 + length
        if tag != 0x0001:
            continue
        values = [int.from_bytes(body[start:start + 8], "little")
                  for start in range(0, len(body) - 7, 8)]
        result = []
        for declared in (size, compressed_size, header_offset):
            if declared == 0xFFFFFFFF:
                if not values:
                    break
                declared = values.pop(0)
            result.append(declared)
        if len(result) == 3:
            return tuple(result)
    raise _bad_archive(where, f"member {_echo(name)} lacks its zip64 sizes")


def _check_member(member: ZipMember, where: str, budget: Budget, directory_offset: int) -> None:
    label = f"{where}: member {_echo(member.name)}"
    if member.flags & 0x1:
        raise InputError(f"{label} is encrypted; expected a plain numpy archive")
    if member.method not in (STORED, DEFLATED):
        method = METHOD_NAMES.get(member.method, "an unknown method")
        raise InputError(
            f"{label} is compressed with {method} (zip method {member.method}); expected stored "
            "or deflate, which numpy.savez and savez_compressed write"
        )
    if member.size > budget.max_bytes:
        raise InputError(
            f"{label} declares {member.size:,} bytes uncompressed, over the byte budget of "
            f"{budget.max_bytes:,}; expected a smaller file, or raise Budget.max_bytes"
        )
    if member.method == STORED and member.compressed_size != member.size:
        raise _bad_archive(where, f"stored member {_echo(member.name)} has two different sizes")
    if member.header_offset + _LOCAL.size + member.compressed_size > directory_offset:
        raise _bad_archive(where, f"member {_echo(member.name)} runs past the end of the data")


class _MemberReader:
    """Reads one member's bytes, inflating in bounded steps and never past its declared size."""

    def __init__(self, stream, member: ZipMember, data_offset: int, where: str):
        self._stream = stream
        self._member = member
        self._where = f"{where}: member {_echo(member.name)}"
        self._offset = data_offset  # next compressed byte to read
        self._compressed_left = member.compressed_size
        self._left = member.size  # bytes still to hand out
        self._crc = 0
        self._inflater = zlib.decompressobj(-15) if member.method == DEFLATED else None
        self._pending = b""  # compressed bytes zlib has not consumed yet

    def readable(self) -> bool:
        return True

    def read(self, count: int = -1) -> bytes:
        if count is None or count < 0:
            count = self._left
        buffer = bytearray(min(count, self._left))
        return bytes(buffer[:self.readinto(buffer)])

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._left)
        filled = 0
        while filled < wanted:
            chunk = self._next(wanted - filled)
            if not chunk:
                raise InputError(f"{self._where} is truncated: its data ends "
                                 f"{self._left - filled:,} bytes before its declared size")
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        self._left -= filled
        self._crc = zlib.crc32(view[:filled], self._crc)
        if self._left == 0 and filled:
            self._finish()
        return filled

    def _compressed(self, count: int) -> bytes:
        count = min(count, self._compressed_left)
        if count <= 0:
            return b""
        self._stream.seek(self._offset)
        data = self._stream.read(count)
        self._offset += len(data)
        self._compressed_left -= len(data)
        return data

    def _next(self, most: int) -> bytes:
        if self._inflater is None:
            return self._compressed(min(most, 1 << 24))
        while True:
            if not self._pending:
                self._pending = self._compressed(_READ_STEP)
            try:
                out = self._inflater.decompress(self._pending, most)
            except zlib.error as error:
                raise InputError(f"{self._where} is not valid deflate data ({error})") from None
            self._pending = self._inflater.unconsumed_tail
            if out or self._inflater.eof or (not self._pending and not self._compressed_left):
                return out

    def _finish(self) -> None:
        if self._inflater is not None:
            # The declared size is reached: the stream must end here, not inflate further.
            try:
                extra = self._inflater.decompress(self._pending, 1)
                while not extra and not self._inflater.eof and (self._inflater.unconsumed_tail
                                                                or self._compressed_left):
                    self._pending = self._inflater.unconsumed_tail or self._compressed(_READ_STEP)
                    extra = self._inflater.decompress(self._pending, 1)
            except zlib.error as error:
                raise InputError(f"{self._where} is not valid deflate data ({error})") from None
            if extra:
                raise InputError(
                    f"{self._where} inflates past the {self._member.size:,} bytes its directory "
                    "entry declares; expected an archive written by numpy"
                )
        if self._crc != self._member.crc:
            raise InputError(f"{self._where} fails its CRC-32 check; the file is damaged")


def open_member(stream, member: ZipMember, where: str) -> _MemberReader:
    """A bounded reader of one member (its local header checked against the directory)."""
    (signature, _, _, method, _, _, _, _, _, name_length,
     extra_length) = _LOCAL.unpack(_read_at(stream, member.header_offset, _LOCAL.size, where))
    if signature != b"PK\x03\x04":
        raise _bad_archive(where, f"member {_echo(member.name)} has no local header")
    if method != member.method:
        raise _bad_archive(where, f"member {_echo(member.name)} has two compression methods")
    data_offset = member.header_offset + _LOCAL.size + name_length + extra_length
    return _MemberReader(stream, member, data_offset, where)


def npy_members(members: dict[str, ZipMember]) -> dict[str, ZipMember]:
    """`{key: member}` for the `.npy` members, keyed as numpy's `NpzFile` keys them."""
    return {name[:-4]: member for name, member in members.items() if name.endswith(".npy")}


def read_npz_member(stream, member: ZipMember, where: str, *, kinds: str, max_elements: int,
                    budget_setting: str, allowance: ByteAllowance) -> np.ndarray:
    """One `.npy` member through `npy.read_npy`, inflated at most to its declared size."""
    reader = open_member(stream, member, where.split(", ", 1)[0])
    return read_npy(reader, member.size, where, kinds=kinds, max_elements=max_elements,
                    budget_setting=budget_setting, allowance=allowance)


class SafeArchive:
    """A checked zip directory over one stream, plus the file's byte allowance.

    It answers `namelist()`, `infolist()` and `getinfo(name)` like `zipfile.ZipFile` (with
    `ZipMember` entries), and `read_array(name, ...)` reads one `.npy` member within the allowance.

    Args:
        stream: seekable binary stream of the archive (kept open by the caller).
        size: its size in bytes.
        where: the file name, for messages.
        budget: bounds every member's declared size and all arrays together (`max_bytes`).
    """

    def __init__(self, stream, size: int, where: str, budget: Budget = DEFAULT_BUDGET):
        self.stream = stream
        self.where = where
        self.members = read_zip_directory(stream, size, where, budget)
        self.allowance = ByteAllowance(budget.max_bytes, where)

    def namelist(self) -> list[str]:
        return list(self.members)

    def infolist(self) -> list[ZipMember]:
        return list(self.members.values())

    def getinfo(self, name: str) -> ZipMember:
        return self.members[name]

    def read_array(self, name: str, where: str, *, kinds: str, max_elements: int,
                   budget_setting: str) -> np.ndarray:
        """The `.npy` member `name`, its bytes taken from the archive's allowance."""
        return read_npz_member(self.stream, self.members[name], where, kinds=kinds,
                               max_elements=max_elements, budget_setting=budget_setting,
                               allowance=self.allowance)


def read_npz_members(file, budget: Budget = DEFAULT_BUDGET, *, allowed=None, kinds: str = "biuf",
                     where: str | None = None) -> dict[str, np.ndarray]:
    """Every `.npy` member of a .npz (or those named in `allowed`), all within one byte budget.

    Args:
        file: a path or a seekable binary file object.
        budget: `max_bytes` bounds all members together, `max_dense_floats` each one's elements.
        allowed: optional set of keys to read; any other `.npy` member is an `InputError`.
        kinds: accepted dtype kinds for every member (see `npy.read_npy`).
        where: name for messages (default: the path's or file's name).

    Returns:
        `{key: array}`; keys are member names without `.npy`.
    """
    owned = None
    if isinstance(file, (str, os.PathLike)):
        where = where or os.path.basename(os.fspath(file))
        try:
            owned = stream = open(file, "rb")
        except OSError as error:
            raise InputError(f"{where}: cannot open the file ({error.strerror or error})") from None
    else:
        stream = file
        where = where or os.path.basename(str(getattr(file, "name", "the archive")))
    try:
        size = stream.seek(0, os.SEEK_END)
        archive = SafeArchive(stream, size, where, budget)
        members = npy_members(archive.members)
        if allowed is not None:
            unexpected = sorted(set(members) - set(allowed))
            if unexpected:
                raise InputError(f"{where}: holds unexpected arrays {_echo(unexpected)}; expected "
                                 f"only {_echo(sorted(allowed))}")
        return {key: archive.read_array(member.name, f"{where}, array '{key}'", kinds=kinds,
                                        max_elements=budget.max_dense_floats,
                                        budget_setting="max_dense_floats")
                for key, member in members.items()}
    finally:
        if owned is not None:
            owned.close()
