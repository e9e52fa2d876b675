"""Read benchmark records from local JSON / JSONL / Parquet files or from the Hugging Face hub.

Records are plain dicts, each with a human-readable location ("line 7", "row 3") so every problem can be reported
precisely. A bad JSONL line is reported and skipped; the rest of the file is still read. Benchmarks turn records into
:class:`~failtrace.benchmarks.base.Item` objects with :func:`build_items`.

Hub ids (``owner/name``, optionally ``owner/name:split``) go through ``datasets.load_dataset``; documented ids:
``google/IFEval`` (split ``train``), ``HuggingFaceH4/MATH-500`` (``test``), ``openai/openai_humaneval`` (``test``).
When the hub cannot be reached the error says to pass a local file instead.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from failtrace.benchmarks.base import Item, LoadReport
from failtrace.errors import FailtraceError
from failtrace.hub import hub_reachable as _hub_reachable
from failtrace.hub import offline_mode as _offline_mode

#: Suffixes read as local files (``.gz`` may wrap JSON or JSONL).
LOCAL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".jsonl.gz", ".json.gz")
TRACE_SUFFIX = ".traj"  # a SWE-agent trajectory: JSON, meaningful to the traces benchmark only
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")

Record = tuple[str, dict[str, Any]]  # (location such as "line 3", the record)


_GZIP_MAGIC = b"\x1f\x8b"


def _open_bytes(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped for ``.gz`` names; a ``.gz`` that is not gzip is refused up front."""
    try:
        if path.name.lower().endswith(".gz"):
            with path.open("rb") as fh:
                magic = fh.read(2)
            if magic != _GZIP_MAGIC:
                raise FailtraceError(f"{path} ends in .gz but is not gzip-compressed (it starts with {magic!r}); "
                                     f"rename it without .gz, or compress it with gzip")
            return gzip.open(path, "rb")
        return path.open("rb")
    except OSError as exc:
        raise FailtraceError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_error(path: Path, exc: Exception) -> FailtraceError:
    """A file that breaks while being read (truncated gzip, I/O error) as a message naming it."""
    if isinstance(exc, (EOFError, gzip.BadGzipFile)):
        return FailtraceError(f"{path} is a damaged or truncated gzip file ({exc}); compress it again")
    return FailtraceError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")


def _utf8_problem(exc: UnicodeDecodeError, where: str = "column") -> str:
    return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {where} {exc.start + 1}); save the file as UTF-8"


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any) -> bool:
    """A string anywhere in ``value`` holding half of a UTF-16 pair (JSON's ``"\\ud800"`` escape alone): Python
    reads it, but it is no text and cannot be written to the store or shown."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


_NOT_TEXT = "holds an unpaired UTF-16 surrogate escape (such as \\ud800), which is not text"


def _looks_binary(path: Path) -> bool:
    """A NUL byte in the first 8 KB: this is no JSON text file (JSON text never holds a raw NUL)."""
    with _open_bytes(path) as fh:
        try:
            return b"\0" in fh.read(8192)
        except (OSError, EOFError) as exc:
            raise _read_error(path, exc) from None


def _iter_jsonl(path: Path, problems: list[str]) -> Iterator[Record]:
    """Stream a JSONL file; undecodable, malformed or non-object lines are reported by line number and skipped."""
    if _looks_binary(path):
        raise FailtraceError(f"{path} is not a text file (it holds binary data); pass JSON Lines text with one "
                             f"JSON object per line, a JSON file, or a Parquet file")
    with _open_bytes(path) as fh:
        try:
            yield from _jsonl_records(path, fh, problems)
        except (OSError, EOFError) as exc:
            raise _read_error(path, exc) from None


def _jsonl_records(path: Path, fh: IO[bytes], problems: list[str]) -> Iterator[Record]:
    """Each line decoded on its own, so one bad line (not UTF-8, not JSON, not an object) costs only that line."""
    for lineno, raw in enumerate(fh, start=1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{path.name} line {lineno}: {_utf8_problem(exc)}")
            continue
        if not line.strip():
            continue
        line = line.rstrip("\r\n")  # with its newline, a line cut short was blamed on the next line's column 1
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            where = ", the end of the line" if exc.pos >= len(line) else ""
            problems.append(f"{path.name} line {lineno}: malformed JSON ({exc.msg} at column {exc.colno}{where})")
            continue
        except RecursionError:
            problems.append(f"{path.name} line {lineno}: JSON nested too deeply to read")
            continue
        except ValueError as exc:  # an integer of more than 4,300 digits (Python's limit on int())
            problems.append(f"{path.name} line {lineno}: a number too long to read ({str(exc).split(';')[0]})")
            continue
        if not isinstance(value, dict):
            problems.append(f"{path.name} line {lineno}: expected a JSON object, got {type(value).__name__}")
            continue
        if _SURROGATE_ESCAPE.search(line) and _lone_surrogate(value):
            problems.append(f"{path.name} line {lineno}: {_NOT_TEXT}")
            continue
        yield f"line {lineno}", value


def _iter_json(path: Path, problems: list[str]) -> Iterator[Record]:
    """A JSON file holding a list of objects, or one object (a list under "data"/"items"/"rows", or a single record).

    A ``.json`` file that is really JSON Lines (several documents) is read as JSONL.
    """
    with _open_bytes(path) as fh:
        try:
            data = fh.read()
        except (OSError, EOFError) as exc:
            raise _read_error(path, exc) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FailtraceError(f"{path}: {_utf8_problem(exc, 'byte offset')}") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise FailtraceError(f"{path}: JSON nested too deeply to read") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level documents: JSON Lines under a .json name
            yield from _iter_jsonl(path, problems)
            return
        raise FailtraceError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                             "pass a JSON array of objects, or a JSONL file with one object per line") from exc
    except ValueError as exc:  # an integer of more than 4,300 digits (Python's limit on int())
        raise FailtraceError(f"{path}: holds a number too long to read ({str(exc).split(';')[0]})") from None
    if isinstance(value, dict):
        for key in ("data", "items", "rows", "examples"):
            if isinstance(value.get(key), list):
                value = value[key]
                break
        else:
            value = [value]
    if not isinstance(value, list):
        raise FailtraceError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    surrogates = bool(_SURROGATE_ESCAPE.search(text))
    for index, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            problems.append(f"{path.name} item {index}: expected a JSON object, got {type(row).__name__}")
            continue
        if surrogates and _lone_surrogate(row):
            problems.append(f"{path.name} item {index}: {_NOT_TEXT}")
            continue
        yield f"item {index}", row


def _iter_parquet(path: Path, problems: list[str]) -> Iterator[Record]:
    """Stream a Parquet file batch by batch (so ``limit`` does not read the whole file)."""
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise FailtraceError(f"{path}: not a readable Parquet file ({exc})") from exc
    row = 0
    batches = pfile.iter_batches(batch_size=256)
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # a damaged row group: pyarrow raises OSError or ArrowInvalid
            raise FailtraceError(f"{path}: damaged Parquet data after row {row} ({exc})") from None
        if batch is None:
            return
        try:
            records = batch.to_pylist()
        except (OverflowError, ValueError) as exc:  # a date or time out of Python's range, in any column
            raise FailtraceError(f"{path}: rows {row + 1}-{row + batch.num_rows} hold a value Python cannot "
                                 f"represent ({exc}); drop or fix that column") from None
        for record in records:
            row += 1
            yield f"row {row}", record


def _iter_hub(source: str, default_split: str) -> Iterator[Record]:
    """Rows of a hub dataset through ``datasets.load_dataset`` (uses the local cache under HF_HUB_OFFLINE=1)."""
    dataset_id, _, split = source.partition(":")
    split = split or default_split
    hint = (f"pass a local JSON/JSONL/Parquet file instead (for example a copy of {dataset_id})"
            + (" (offline mode is set: only the Hugging Face cache is read)" if _offline_mode() else
               ", or set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache"))
    if not _offline_mode() and not _hub_reachable():
        raise FailtraceError(f"'{source}' is not a local file and the Hugging Face hub cannot be reached "
                             f"to download it; {hint}")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise FailtraceError(f"loading hub dataset '{source}' needs the 'datasets' package; {hint}") from exc
    try:
        rows = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # network, auth, unknown split or dataset: all user-facing
        raise FailtraceError(f"could not load hub dataset '{dataset_id}' split '{split}': {exc}; {hint}") from exc
    for index, row in enumerate(rows, start=1):
        yield f"row {index}", dict(row)


def iter_records(source: str, problems: list[str], *, default_split: str = "train") -> Iterator[Record]:
    """Records of ``source``: a local file (by suffix) or a hub dataset id. Problems are appended as met."""
    path = Path(source).expanduser()
    if path.is_file():
        name = path.name.lower()
        if path.stat().st_size == 0:
            raise FailtraceError(f"{path} is empty; pass a file with at least one benchmark item")
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            return _iter_jsonl(path, problems)
        if name.endswith((".json", ".json.gz", TRACE_SUFFIX)):
            return _iter_json(path, problems)
        if name.endswith(".parquet"):
            return _iter_parquet(path, problems)
        raise FailtraceError(f"{path}: unknown file type; use one of {', '.join(LOCAL_SUFFIXES)} (traces also read "
                             f"a SWE-agent {TRACE_SUFFIX} file)")
    if path.is_dir():
        raise FailtraceError(f"{path} is a folder; pass one JSON, JSONL or Parquet file")
    if path.exists():  # /dev/stdin, a FIFO, a device: it is there, but it is not a file to read items from
        raise FailtraceError(f"{path} is not a regular file (a device, a pipe or a socket); pass one JSON, JSONL or "
                             "Parquet file")
    if _HUB_ID.match(source) and not source.lower().endswith((*LOCAL_SUFFIXES, TRACE_SUFFIX)):
        return _iter_hub(source, default_split)
    raise FailtraceError(f"{source}: no such file; pass a local JSON/JSONL/Parquet file or a hub dataset id "
                         "such as google/IFEval")


def missing_fields(record: dict[str, Any], required: Sequence[str]) -> list[str]:
    """Required keys that are absent or null in ``record``."""
    return [name for name in required if record.get(name) is None]


def build_items(source: str, limit: int | None, required: Sequence[str],
                to_item: Callable[[dict[str, Any], str], Item], *, default_split: str = "train",
                formats: str = "") -> LoadReport:
    """Read ``source`` and turn each record into an Item, stopping after ``limit`` good items.

    Records missing a required field, or that ``to_item`` rejects with ValueError/TypeError/KeyError, are reported
    with their location and skipped. A source that yields no item at all is an error, which ends with ``formats``
    (what the benchmark reads, when that is more than the items' own fields).
    """
    _check_limit(limit)
    problems: list[str] = []
    records = iter_records(source, problems, default_split=default_split)
    return items_from_records(records, source, limit, required, to_item, problems, formats=formats)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise FailtraceError(f"limit must be a positive number of items, got {limit}")


def summarise_problems(problems: Sequence[str], shown: int = 5) -> str:
    """The problems of a file, one entry per distinct message ("line 1 and 540 more: missing field(s) ..."), so a
    file of the wrong benchmark reads as one complaint, not the same one five times."""
    groups: dict[str, list[str]] = {}
    for problem in problems:
        where, sep, message = problem.partition(": ")
        groups.setdefault(message if sep else problem, []).append(where if sep else "")
    parts = [(f"{w[0]}{f' and {len(w) - 1} more' if len(w) > 1 else ''}: " if w[0] else "") + message
             for message, w in list(groups.items())[:shown]]
    rest = sum(len(w) for w in list(groups.values())[shown:])
    return "; ".join(parts) + (f"; ... and {rest} more" if rest else "")


def items_from_records(records: Iterator[Record], source: str, limit: int | None, required: Sequence[str],
                       to_item: Callable[[dict[str, Any], str], Item],
                       problems: list[str] | None = None, formats: str = "") -> LoadReport:
    """The part of :func:`build_items` after reading, for records that come from elsewhere (e.g. a converter)."""
    _check_limit(limit)
    problems = [] if problems is None else problems
    items: list[Item] = []
    try:
        _collect(records, limit, required, to_item, items, problems)
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()  # release the file handle when ``limit`` stopped reading early
    if not items:
        shown = summarise_problems(problems)
        raise FailtraceError(f"no usable items in {source}" + (f": {shown}" if shown else
                                                                ": it is empty or holds no records")
                             + (f"; {formats}" if formats else ""))
    return LoadReport(items=items, problems=problems)


def _collect(records: Iterator[Record], limit: int | None, required: Sequence[str],
             to_item: Callable[[dict[str, Any], str], Item], items: list[Item], problems: list[str]) -> None:
    seen: set[str] = set()
    for where, record in records:
        missing = missing_fields(record, required)
        if missing:
            problems.append(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)} "
                            f"(each item needs {', '.join(required)})")
            continue
        try:
            item = to_item(record, where)
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        if item.id in seen:
            problems.append(f"{where}: duplicate id {item.id!r} (kept the first)")
            continue
        seen.add(item.id)
        items.append(item)
        if limit is not None and len(items) >= limit:
            return  # stop reading: the rest of the file is never parsed
