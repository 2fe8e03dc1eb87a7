"""Bounded text reading for CSV and Matrix Market files: limits on bytes, lines and line length are
checked on the raw bytes first, then lines are decoded and parsed one ~1 MiB chunk at a time.

Nothing here reads a whole file into one string or splits it into one list of lines: a text flood
(10 M short lines, one 57 MB line, 143 MB of newlines) is refused after a bounded amount of work.

Internal API (also used by the session loader):
- `scan_text(stream, size, where, max_bytes=..., max_lines=...)`: pass 1 over the raw bytes; refuses
  a file over `max_bytes`, with more than `max_lines` lines, or with a line over
  `MAX_LINE_BYTES`, before anything is decoded. Returns the line count.
- `line_chunks(stream, where)`: pass 2; yields `(line_numbers, lines)` per chunk: the non-blank
  lines, decoded as UTF-8 (a leading BOM dropped), with their 1-based line numbers.
- `NumericTable(where, ...)`: `feed(line_numbers, lines)` parses a chunk of numeric lines with
  numpy's C parser, refusing rows past `max_rows` before the chunk is parsed; `result()` gives the
  float64 table (allocated once when a `capacity` is known) and each row's source line number.
"""

from __future__ import annotations

import bisect
import io

import numpy as np

from sdattn.inputs.example import InputError, _check_limit, _echo

CHUNK_BYTES = 1 << 20
# Longer than any row of numbers a person writes (a 1,024-float key row is ~25 KB), and a bound on
# the one string a single line can cost.
MAX_LINE_BYTES = 1 << 20
# Lines a text file may have beyond its data rows: a header, comments, blank lines.
EXTRA_LINES = 4_096


def scan_text(stream, size: int, where: str, *, max_bytes: int, max_lines: int,
              max_line_bytes: int = MAX_LINE_BYTES) -> int:
    """Check size, line count and line length on the raw bytes, chunk by chunk; rewind the stream.

    Args:
        stream: seekable binary stream of the file.
        size: its size in bytes.
        where: the file name, for messages.
        max_bytes: the byte budget (`Budget.max_bytes`).
        max_lines: most lines (data rows plus `EXTRA_LINES`).
        max_line_bytes: the longest line allowed.

    Returns:
        The number of lines.
    """
    if size > max_bytes:
        raise InputError(
            f"{where}: is {size:,} bytes, over the byte budget of {max_bytes:,} for a text file; "
            "expected a smaller file, or raise Budget.max_bytes"
        )
    stream.seek(0)
    lines = 0
    current = 0  # bytes of the line not yet ended by a newline
    while chunk := stream.read(CHUNK_BYTES):
        newlines = chunk.count(b"\n")
        if newlines:
            ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            lengths = np.diff(ends, prepend=-1) - 1
            lengths[0] += current
            longest = int(lengths.argmax())
            if lengths[longest] > max_line_bytes:
                _long_line(where, lines + longest + 1, max_line_bytes)
            current = len(chunk) - int(ends[-1]) - 1
        else:
            current += len(chunk)
        lines += newlines
        if current > max_line_bytes:
            _long_line(where, lines + 1, max_line_bytes)
        if lines > max_lines:
            raise InputError(
                f"{where}: has more than {max_lines:,} lines; expected at most the budget's rows "
                f"plus {EXTRA_LINES:,} header, comment or blank lines"
            )
    stream.seek(0)
    return lines + (1 if current else 0)


def _long_line(where: str, number: int, limit: int):
    raise InputError(f"{where}, line {number:,}: is longer than {limit:,} bytes; expected one "
                     "row of numbers per line")


def line_chunks(stream, where: str):
    """Yield `(line_numbers, lines)` for each ~1 MiB chunk: the non-blank lines and their numbers.

    Call after `scan_text`, which bounds the line length (so a chunk is at most two lines' worth
    past `CHUNK_BYTES`). Lines keep leading spaces; trailing "\\r" of CRLF files is dropped.
    """
    carry = b""
    first_line = 1
    start = True
    while True:
        data = stream.read(CHUNK_BYTES)
        raw = carry + data
        if not raw:
            return
        if data:
            cut = raw.rfind(b"\n") + 1
            if cut == 0:
                carry = raw
                continue
            raw, carry = raw[:cut], raw[cut:]
        else:
            carry = b""
        try:
            text = raw.decode("utf-8-sig" if start else "utf-8")
        except UnicodeDecodeError as error:
            line = first_line + raw[:error.start].count(b"\n")
            raise InputError(f"{where}, line {line:,}: the file is not UTF-8 text (byte "
                             f"{error.start}); expected a text file") from None
        start = False
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if "\r" in text:
            lines = [line.rstrip("\r") for line in lines]
        keep = [index for index, line in enumerate(lines) if line.strip()]
        yield [first_line + index for index in keep], [lines[index] for index in keep]
        first_line += len(lines)
        if not data:
            return


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class LineNumbers:
    """The source line of each parsed row, stored per chunk: a chunk of consecutive lines (the
    usual case) costs two integers instead of 8 bytes per row. `numbers[row]` gives one."""

    def __init__(self):
        self._starts: list[int] = []  # first row of each chunk
        self._chunks: list = []  # first line number (int), or an int64 array of line numbers

    def append(self, first_row: int, line_numbers) -> None:
        self._starts.append(first_row)
        consecutive = line_numbers[-1] - line_numbers[0] == len(line_numbers) - 1
        self._chunks.append(line_numbers[0] if consecutive
                            else np.asarray(line_numbers, dtype=np.int64))

    def __getitem__(self, row) -> int:
        chunk = bisect.bisect_right(self._starts, int(row)) - 1
        numbers = self._chunks[chunk]
        offset = int(row) - self._starts[chunk]
        return numbers + offset if isinstance(numbers, int) else int(numbers[offset])


class NumericTable:
    """Numeric rows parsed chunk by chunk, with the row budget applied before each chunk's parse.

    Args:
        where: the file name, for messages.
        columns: accepted column counts, or None for any (consistent) count.
        max_rows: most data rows.
        max_values: most rows * columns.
        budget_setting: the Budget field named in budget messages.
        delimiter: "," for csv, None for whitespace (Matrix Market).
        comment: lines starting with it (after spaces) are skipped, or None.
        allow_header: skip a first data line with no numeric token (e.g. "row,col,value").
        columns_hint: what the columns mean, for the message.
        too_many_rows: message for more than `max_rows` rows (default: the budget message).
        capacity: an upper bound on the rows (e.g. the line count from `scan_text`): the table is
            then allocated once, instead of chunks concatenated at the end (twice the memory).
    """

    def __init__(self, where: str, *, columns, max_rows: int, max_values: int,
                 budget_setting: str, delimiter: str | None = ",", comment: str | None = "#",
                 allow_header: bool = True, columns_hint: str = "", too_many_rows: str | None = None,
                 capacity: int | None = None):
        self.where = where
        self._columns = columns
        self._max_rows = max_rows
        self._max_values = max_values
        self._setting = budget_setting
        self._delimiter = delimiter
        self._comment = comment
        self._header_pending = allow_header
        self._hint = columns_hint
        self._too_many_rows = too_many_rows
        self._width = None
        self._rows = 0
        self._capacity = None if capacity is None else min(capacity, max_rows)
        self._table: np.ndarray | None = None  # preallocated, with a capacity
        self._tables: list[np.ndarray] = []  # without one
        self._line_numbers = LineNumbers()

    def feed(self, line_numbers, lines) -> None:
        """Parse one chunk of non-blank lines (as `line_chunks` yields them)."""
        if self._comment is not None:
            keep = [index for index, line in enumerate(lines)
                    if not line.lstrip().startswith(self._comment)]
            if len(keep) != len(lines):
                line_numbers = [line_numbers[index] for index in keep]
                lines = [lines[index] for index in keep]
        if not lines:
            return
        if self._header_pending:
            self._header_pending = False
            if not any(_is_number(token) for token in lines[0].split(self._delimiter)):
                line_numbers, lines = line_numbers[1:], lines[1:]
                if not lines:
                    return
        if self._width is None:
            self._width = len(lines[0].split(self._delimiter))
            if self._columns is not None and self._width not in self._columns:
                raise InputError(
                    f"{self.where}, line {line_numbers[0]:,}: found {self._width} columns; "
                    "expected " + " or ".join(str(count) for count in self._columns)
                    + f" columns {self._hint}".rstrip()
                )
        if self._rows + len(lines) > self._max_rows:
            if self._too_many_rows is not None:
                raise InputError(self._too_many_rows)
            _check_limit(self._rows + len(lines), self._max_rows, self.where,
                         "entries (rows)", self._setting)
        _check_limit((self._rows + len(lines)) * self._width, self._max_values, self.where,
                     "values", self._setting)
        try:
            table = np.loadtxt(io.StringIO("\n".join(lines)), delimiter=self._delimiter,
                               dtype=np.float64, ndmin=2, comments=None)
        except ValueError as error:
            raise InputError(self._locate_problem(line_numbers, lines, error)) from None
        if table.shape != (len(lines), self._width):
            raise InputError(f"{self.where}: rows have {table.shape[1]} columns; expected "
                             f"{self._width}")
        bad = np.argwhere(~np.isfinite(table))
        if bad.size:
            row, column = (int(x) for x in bad[0])
            raise InputError(
                f"{self.where}, line {line_numbers[row]:,}, column {column + 1}: "
                f"{table[row, column]} is not a finite number; expected no NaN or Inf"
            )
        if self._capacity is None:
            self._tables.append(table)
        else:
            if self._table is None:
                self._table = np.empty((self._capacity, self._width), dtype=np.float64)
            if self._rows + len(lines) > self._capacity:
                raise InputError(f"{self.where}: has more rows than its lines counted; the file "
                                 "changed while it was read")
            self._table[self._rows:self._rows + len(lines)] = table
        self._line_numbers.append(self._rows, line_numbers)
        self._rows += len(lines)

    def result(self):
        """`(float64 [rows, columns], LineNumbers)`: `numbers[row]` is a row's source line."""
        if not self._rows:
            raise InputError(f"{self.where}: has no data rows; expected lines of numbers")
        if self._table is not None:
            table = self._table[:self._rows]
        else:
            table = self._tables[0] if len(self._tables) == 1 else np.concatenate(self._tables)
        self._table, self._tables = None, []
        return table, self._line_numbers

    @property
    def rows(self) -> int:
        return self._rows

    def _locate_problem(self, line_numbers, lines, error: Exception) -> str:
        # numpy's row numbers skip blank lines and the header; find the real line for the message.
        for number, line in zip(line_numbers, lines):
            tokens = line.split(self._delimiter)
            if len(tokens) != self._width:
                return (f"{self.where}, line {number:,}: found {len(tokens)} columns; expected "
                        f"{self._width}")
            for column, token in enumerate(tokens, 1):
                if not _is_number(token):
                    return (f"{self.where}, line {number:,}, column {column}: "
                            f"{_echo(token.strip(), 40)} is not a number; expected numeric values")
        return f"{self.where}: cannot parse the numbers ({_echo(str(error), 80)}); expected numbers"
