"""Text-level helpers for the table reader: a bounded look at the first lines, separator
detection, a line-length-bounded byte stream, and finding the line behind a bad row."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .io_common import open_text
from .io_common import short as _short

SEPARATORS = (",", "\t", ";", "|")
SEP_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
PEEK_BYTES = 1 << 20   # text used to detect the layout (more for very wide headers)
MAX_LINE = 32 << 20    # a longer line is not a row of a table of cells
#: Errors of reading a (possibly gzipped) byte stream.
STREAM_ERRORS = (OSError, EOFError, zlib.error)


def is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _too_long(path: Path) -> DataError:
    return DataError(f"{path}: a line is longer than {MAX_LINE >> 20} MiB; this is not a "
                       "table of cells (or it is corrupt)")


def peek(path: Path) -> str:
    """The first complete lines of the (decompressed, BOM-less) text: about 1 MiB, at least the
    first three lines unless one is longer than :data:`MAX_LINE`."""
    parts: list[bytes] = []
    size = newlines = cur = 0  # cur: bytes of the line not yet ended
    try:
        with (gzip.open(path, "rb") if is_gz(path) else open(path, "rb")) as f:
            while True:
                block = f.read(PEEK_BYTES)
                if not block:
                    at_end = True
                    break
                parts.append(block)
                size += len(block)
                newlines += block.count(b"\n")
                first = block.find(b"\n")
                if first < 0:
                    cur += len(block)
                else:
                    if cur + first > MAX_LINE:
                        raise _too_long(path)
                    cur = len(block) - block.rfind(b"\n") - 1
                if cur > MAX_LINE:
                    raise _too_long(path)
                if (newlines >= 3 and size >= PEEK_BYTES) or size > 3 * MAX_LINE:
                    at_end = False
                    break
    except DataError:
        raise
    except STREAM_ERRORS as e:
        what = "gzip file" if is_gz(path) else "file"
        raise DataError(f"{path}: cannot read this {what}; it may be truncated or corrupt "
                        f"({type(e).__name__}: {_short(e)})") from None
    buf = b"".join(parts)
    if not at_end and b"\n" in buf:
        buf = buf[:buf.rfind(b"\n") + 1]
    try:
        return buf.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start:,} is {buf[e.start:e.start + 1]!r}"
                        "); save the table as UTF-8 (e.g. 'CSV UTF-8' in Excel)") from None


def records(text: str, sep: str, limit: int) -> list[list[str]] | None:
    """Up to ``limit`` non-blank records of ``text`` split with ``sep`` (None if csv fails)."""
    try:
        rows = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        return [r for r in itertools.islice(rows, limit * 2) if r][:limit]
    except csv.Error:
        return None


@dataclass
class Layout:
    """The separator, how it was chosen, and the header's fields."""

    sep: str
    how: str                 # "detected" | "from the file extension"
    header: list[str]
    n_body: int | None       # the usual number of fields of the data rows (None: no rows)
    trailing: bool = False   # every data row ends with an empty field (a trailing separator)

    def describe(self) -> str:
        return f"{SEP_NAMES[self.sep]}-separated ({self.how})"


def detect_layout(path: Path, text: str) -> Layout:
    """Choose the separator that splits the first lines into the most, consistent fields.

    A candidate is consistent when 60% of the first 30 data rows have the same number of fields
    and the header has that many (or one fewer: R's row-name column). The extension's separator
    (``,`` for .csv, tab for .tsv) wins ties; .txt files have none."""
    name = path.name.lower()
    default = "\t" if name.endswith((".tsv", ".tsv.gz")) else \
        "," if name.endswith((".csv", ".csv.gz")) else None
    scored = []
    for sep in SEPARATORS:
        rows = records(text, sep, 31)
        if not rows:
            continue
        header, body = len(rows[0]), [len(r) for r in rows[1:]]
        mode, n = Counter(body).most_common(1)[0] if body else (header, 1)
        frac = n / len(body) if body else 1.0
        if mode >= 2 and frac >= 0.6 and header in (mode, mode - 1):
            trailing = bool(body) and all(len(r) == mode and r[-1] == "" for r in rows[1:]) \
                and (mode == header + 1 or rows[0][-1].strip() == "")
            scored.append((frac, mode, sep == default, sep, rows[0], mode if body else None,
                           trailing))
    if scored:
        frac, mode, _, sep, header, n_body, trailing = max(scored)
        how = "from the file extension" if sep == default else "detected"
        return Layout(sep, how, header, n_body, trailing)
    if default is None:
        first = text.split("\n", 1)[0]
        default = "\t" if first.count("\t") >= first.count(",") else ","
    rows = records(text, default, 31) or [[]]
    n_body = Counter(len(r) for r in rows[1:]).most_common(1)[0][0] if len(rows) > 1 else None
    how = "from the file extension" if name.endswith(
        (".tsv", ".tsv.gz", ".csv", ".csv.gz")) else "assumed"
    return Layout(default, how, rows[0], n_body)


class RaggedRow(Exception):
    """The stream saw a record whose field count differs from the header's (to be confirmed
    with :func:`locate`, which knows quoting as well as pandas does)."""


class BoundedStream(io.RawIOBase):
    """The file's (decompressed) bytes, checked on the way through: a line longer than
    :data:`MAX_LINE` raises :class:`DataError`; with ``n_fields``, a record (quotes
    respected, blank lines skipped, the header excepted) with another number of fields raises
    :class:`RaggedRow`. pandas' chunked C parser silently drops extra fields of the first row of
    each chunk, so it cannot be relied on for this."""

    def __init__(self, path: Path, sep: str = ",", n_fields: int | None = None):
        self.path = path
        self.raw = open(path, "rb")  # noqa: SIM115 (closed in close())
        self.src = gzip.GzipFile(fileobj=self.raw) if is_gz(path) else self.raw
        self.line = 0
        self.sep, self.n_fields = ord(sep), n_fields
        self.inside = 0          # inside a quoted field at the end of the last block
        self.seps = 0            # separators of the record not yet ended
        self.length = 0          # its bytes
        self.last = 0            # its last byte
        self.records = 0         # non-blank records ended

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.src.read(len(b))
        n = len(data)
        first = data.find(b"\n")
        if first < 0:
            self.line += n
        else:
            if self.line + first > MAX_LINE:
                raise _too_long(self.path)
            self.line = n - data.rfind(b"\n") - 1
        if self.line > MAX_LINE:
            raise _too_long(self.path)
        if self.n_fields is not None:
            self._count(data)
        b[:n] = data
        return n

    def _end_record(self, seps: int, length: int, last: int) -> None:
        blank = length == 0 or (length == 1 and last == 13)
        if blank:
            return
        if self.records and seps + 1 != self.n_fields:
            raise RaggedRow(self.records)
        self.records += 1

    def _count(self, data: bytes) -> None:
        import numpy as np

        if not data:  # end of file: the last line may have no line end
            self._end_record(self.seps, self.length, self.last)
            self.seps = self.length = 0
            return
        a = np.frombuffer(data, np.uint8)
        quotes = a == 34
        if quotes.any():
            parity = (np.cumsum(quotes, dtype=np.int64) + self.inside) & 1
            outside = parity == 0
            self.inside = int(parity[-1])
        elif self.inside:
            self.seps, self.length, self.last = self.seps, self.length + len(a), int(a[-1])
            return
        else:
            outside = None
        seps = a == self.sep
        ends = a == 10
        if outside is not None:
            seps &= outside
            ends &= outside
        idx = np.flatnonzero(ends)
        cs = np.cumsum(seps, dtype=np.int64)
        if len(idx) == 0:
            self.seps += int(cs[-1])
            self.length += len(a)
            self.last = int(a[-1])
            if self.records and self.seps + 1 > self.n_fields:  # too many already: stop here
                raise RaggedRow(self.records)
            return
        counts = np.diff(cs[idx], prepend=0)
        counts[0] += self.seps
        lengths = np.diff(idx, prepend=-1) - 1
        lengths[0] += self.length
        lasts = a[np.maximum(idx - 1, 0)].astype(np.int64)
        if idx[0] == 0:
            lasts[0] = self.last
        blank = (lengths == 0) | ((lengths == 1) & (lasts == 13))
        k = np.flatnonzero(~blank)
        if len(k):
            check = k if self.records else k[1:]
            wrong = check[counts[check] + 1 != self.n_fields]
            if len(wrong):
                raise RaggedRow(self.records + int(np.searchsorted(k, wrong[0])))
            self.records += len(k)
        self.seps = int(cs[-1] - cs[idx[-1]])
        self.length = len(a) - int(idx[-1]) - 1
        self.last = int(a[-1])
        if self.records and self.seps + 1 > self.n_fields:
            raise RaggedRow(self.records)

    def close(self) -> None:
        try:
            if self.src is not self.raw:
                self.src.close()
        finally:
            self.raw.close()
            super().close()


def _records(f, sep: str):
    """``(line, n_fields, first_field)`` of each non-blank record of an open text file.

    Lines without quotes are counted with ``str.count`` (no list of fields is built, so a
    hostile 30 MB line costs no more than itself); quoted records go through the csv module,
    which joins lines inside quotes as pandas does."""
    it = iter(f)
    line_num = 0
    for line in it:
        line_num += 1
        if '"' not in line or len(line) > PEEK_BYTES:
            body = line.rstrip("\r\n")
            if body:
                if '"' in body:  # a long quoted line: count separators outside quotes
                    n = sum(part.count(sep) for part in body.split('"')[::2]) + 1
                else:
                    n = body.count(sep) + 1
                yield line_num, n, body.split(sep, 1)[0]
            continue
        reader = csv.reader(itertools.chain([line], it), delimiter=sep)
        fields = next(reader, [])
        first = line_num
        line_num += reader.line_num - 1
        if fields:
            yield first, len(fields), fields[0]


def locate(path: Path, sep: str, n_fields: int, target: int) -> tuple[int, int, int, list[str]]:
    """Scan the records (header = record 0, blank lines skipped) up to data record ``target``
    (1-based). Returns ``(record, line, n, [first field])`` of the first record with a field
    count other than ``n_fields``, else of the target record; ``(-1, -1, -1, [])`` when the
    scan fails or ends first."""
    try:
        with open_text(path) as f:
            if f.read(1) not in ("\ufeff", ""):
                f.seek(0)
            for k, (line, n, first) in enumerate(_records(f, sep)):
                if k and (n != n_fields or k >= target):
                    return k, line, n, [first]
    except (csv.Error, UnicodeDecodeError, *STREAM_ERRORS):
        pass
    return -1, -1, -1, []
