"""Read a .csv or .parquet file into a frame and coerce its columns, with messages that name the file (date
columns: ``convfm.data.date_columns``).

Every problem raises ``DataValidationError`` naming the file, the column and the first bad 1-based data row
(the header is not counted).
"""
from __future__ import annotations

import csv
import gzip
import re
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from convfm.errors import DataValidationError

SUFFIXES = (".csv", ".tsv", ".parquet")
TEXT_SUFFIXES = (".csv", ".tsv")  # delimited text: columns read as strings, separator from csv_separator
GZIP_SUFFIXES = (".csv.gz", ".tsv.gz")  # delimited text compressed with gzip, as exports often come
READ_SUFFIXES = SUFFIXES + GZIP_SUFFIXES
# A whole text cell meaning missing, on both paths (pandas in memory, pyarrow under Ray Data), so one list: pandas'
# default NA spellings (pyarrow's lack None and <NA>: a "none" category on one path only) and MySQL's NULL, \\N.
MISSING_CELLS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                 "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "\\N")
# Excel's first line naming the separator: sep=; sep=, sep=| or a tab (\t), in any case, quoted or padded with the
# separator itself (a file saved again by Excel: sep=;;;)
_SEP_LINE = re.compile(r'"?sep=(\\t|.)"?(?:\1)*', re.IGNORECASE)


def file_suffix(path: Path) -> str:
    """A file's format as its name gives it, lower case: ``.csv.gz`` for ``log.CSV.GZ``, else its suffix."""
    name = path.name.lower()
    return next((s for s in GZIP_SUFFIXES if name.endswith(s)), path.suffix.lower())


def is_text(path: Path) -> bool:
    """Whether ``path`` is delimited text (.csv, .tsv, either gzip-compressed), not Parquet."""
    return file_suffix(path) in TEXT_SUFFIXES + GZIP_SUFFIXES


def resolve_path(path: str | Path) -> Path:
    """``path`` itself if it ends in .csv/.tsv/.parquet (or .csv.gz/.tsv.gz), else the first of ``path``.csv,
    .tsv, .parquet, .csv.gz, .tsv.gz that exists, its suffix in any case (``suffixed_files``)."""
    path = Path(path)
    if file_suffix(path) in READ_SUFFIXES:
        if not path.is_file():
            raise DataValidationError(f"{path}: file not found")
        return path
    found = suffixed_files(path)
    if found:
        return found[0]
    if path.is_file():
        raise DataValidationError(f"{path}: unsupported file type; expected a .csv, .tsv or .parquet file")
    raise DataValidationError(f"{path}: file not found (tried {path}.csv, {path}.tsv and {path}.parquet, and "
                              f".csv.gz, .tsv.gz){unread_note(path)}")


def suffixed_files(path: Path) -> list[Path]:
    """The files ``path`` names plus a read suffix, the whole name in any case (Windows tools write
    ``interactions.CSV``, ``Jobs.csv``; macOS and Windows disks found those by any case already), in
    ``READ_SUFFIXES`` order; two one case apart are refused, naming both."""
    found: dict[str, list[Path]] = {}
    stem = path.name.lower()
    for other in path.parent.iterdir() if path.parent.is_dir() else ():
        name = other.name.lower()
        if name.startswith(stem) and name[len(stem):] in READ_SUFFIXES and other.is_file():
            found.setdefault(name[len(stem):], []).append(other)
    for paths in found.values():
        if len(paths) > 1:
            raise DataValidationError(f"{path}: files {sorted(p.name for p in paths)} differ only in case; keep one")
    return [found[suffix][0] for suffix in READ_SUFFIXES if suffix in found]


def unread_note(path: Path) -> str:
    """``"; NAME.jsonl is there, ..."``: a file named like the one looked for in a format not read, else ""."""
    there = sorted(p.name for p in path.parent.glob(f"{path.name}.*") if p.is_file()) if path.parent.is_dir() else []
    if not there:
        return ""
    return (f"; {there} {'is' if len(there) == 1 else 'are'} there, in a format not read: write it as .csv, .tsv or "
            ".parquet (.csv.gz and .tsv.gz are read too)")


def read_frame(path: str | Path, id_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a .csv, .tsv or .parquet file (a path without suffix tries NAME.csv, NAME.tsv, then NAME.parquet).

    CSV columns (any ``csv_separator``) are read as strings (typing is the schema's job, so nothing is lost to
    inference); parquet keeps its types. ``id_columns`` that exist become stripped strings with empty values as NaN.
    """
    frame, _ = read_located(path, id_columns)
    return frame


def part_files(folder: Path) -> list[Path]:
    """A folder's .parquet, .csv or .tsv part files in name order; DataValidationError when there are none or
    they mix formats."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and file_suffix(p) in READ_SUFFIXES)
    if not files or len({file_suffix(p) for p in files}) > 1:
        raise DataValidationError(f"{folder}: expected .parquet, .csv or .tsv part files of one format, found "
                                  f"{[p.name for p in files][:5] or 'none'}")
    return files


def read_located(path: str | Path, id_columns: Iterable[str] = ()) -> tuple[pd.DataFrame, Path]:
    """``read_frame`` plus the file actually read (for messages). A folder of part files (one format, read in
    name order) is read as one table; rows in messages then count across the parts in that order."""
    if Path(path).is_dir():
        frames = [read_located(p, id_columns)[0] for p in part_files(Path(path))]
        return pd.concat(frames, ignore_index=True), Path(path)
    path = resolve_path(path)
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: file is empty (0 bytes)")
    if path.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise DataValidationError(f"{path}: cannot read parquet file ({type(exc).__name__}: {exc})") from None
    else:
        frame = _read_csv(path)
    if len(frame) == 0:
        raise DataValidationError(f"{path}: no data rows (columns: {list(frame.columns)})")
    frame.columns = [str(c).strip() for c in frame.columns]
    _refuse_repeated(path, list(frame.columns))  # names that differed only by surrounding spaces
    for column in id_columns:
        if column in frame.columns:
            frame[column] = id_strings(frame[column])
    return frame, path


def csv_separator(path: Path) -> str:
    """A delimited text file's separator: the one its Excel ``sep=`` line names (``sep_line``); else a tab for
    .tsv; for .csv a comma, unless its header holds none and does hold tabs or semicolons (files exported as TSV
    or by a European spreadsheet, named .csv)."""
    named = sep_line(path)
    if named is not None:
        return named
    if file_suffix(path) in (".tsv", ".tsv.gz"):
        return "\t"
    with _open_text(path) as handle:
        header = handle.readline()
    if "," in header:
        return ","
    return "\t" if "\t" in header else (";" if ";" in header else ",")


def sep_line(path: Path) -> Optional[str]:
    """The separator a text file's first line names (``sep=;``, as Excel writes a CSV for a locale whose
    separator is not its own; ``sep=\\t`` is a tab), else None. Such a line precedes the header."""
    with _open_text(path) as handle:
        first, header = handle.readline().rstrip("\r\n").strip(" "), handle.readline()  # a tab may be the separator
    found = _SEP_LINE.fullmatch(first)
    if found is None:
        return None
    named = "\t" if found.group(1) == "\\t" else found.group(1)
    held = [c for c in (",", ";", "\t", "|") if c in header]
    if named not in header and held:  # read with it, the file would be one column named like the whole header
        raise DataValidationError(f"{path}: line 1 ({first!r}) names the separator {named!r}, but the header on line "
                                  f"2 holds none and holds {held[0]!r}; fix or remove line 1")
    return named


def pandas_csv_options(path: Path) -> dict[str, Any]:
    """``pd.read_csv`` options reading a text file as ``_read_csv`` does: text columns, its separator, past its
    ``sep=`` line, ``MISSING_CELLS`` (only) missing."""
    return {"dtype": str, "encoding": "utf-8-sig", "sep": csv_separator(path),
            "skiprows": 1 if sep_line(path) is not None else None, "keep_default_na": False,
            "na_values": list(MISSING_CELLS)}


def arrow_csv_options(files: Sequence[Path], columns: Sequence[str]) -> dict[str, Any]:
    """pyarrow's CSV options reading ``columns`` of the text ``files`` (Ray Data parses them all alike) as the
    in-memory reader does: as text, with the one separator they share, past the ``sep=`` line all or none have,
    ``MISSING_CELLS`` (only) missing."""
    separators = {csv_separator(p) for p in files}
    if len(separators) > 1:  # one parse option for all: pyarrow would fail on the others without naming them
        raise DataValidationError(f"{files[0].parent}: the text files use different separators "
                                  f"{sorted(separators)}; write them one way")
    named = {p: sep_line(p) for p in files}
    with_line = [p for p in files if named[p] is not None]
    without = [p for p in files if named[p] is None]
    if with_line and without:  # one skip_rows for all: one file's header would be skipped or read as data
        raise DataValidationError(f"{without[0]}: line 1 is the header, while {with_line[0]} starts with a "
                                  f"'sep={named[with_line[0]]}' line; write every file of one table one way")
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=list(columns),
                                   strings_can_be_null=True,
                                   null_values=list(MISSING_CELLS))
    return {"read_options": pacsv.ReadOptions(use_threads=False, skip_rows=1 if with_line else 0),
            "parse_options": pacsv.ParseOptions(delimiter=separators.pop()), "convert_options": convert}


def _refuse_repeated(path: Path, names: list[str]) -> None:
    """A column name twice in one header: a spec naming it would read one of the two without a word."""
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise DataValidationError(f"{path}: column name(s) {repeated} appear more than once in the header")


def resolve_columns(path: Path, columns: Iterable[str], wanted: Mapping[str, str], extra: Iterable[str] = ()
                    ) -> dict[str, str]:
    """canonical -> the file's column for it: the name ``wanted`` gives, else the one header equal to it apart
    from case (``Event``, ``Job_ID``: an export's spelling that, ignored, made every row a positive). The exact
    name wins over other spellings (``title`` beside a display copy ``Title``, left to the extra-column warning);
    a column declared in ``extra`` (``DataConfig.extra_columns`` of the table) is never taken as a canonical one.
    A file holding two spellings of one name, neither exact, is refused, naming both."""
    declared = {str(c) for c in extra}
    spellings: dict[str, list[str]] = {}
    for column in columns:
        if str(column).strip() not in declared:
            spellings.setdefault(str(column).strip().casefold(), []).append(str(column))
    out = {}
    for canonical, name in wanted.items():
        found = spellings.get(name.casefold(), [])
        exact = [c for c in found if c.strip() == name]
        if len(found) > 1 and not exact:
            raise DataValidationError(f"{path}: columns {found} are one name apart from case ({name!r}); keep one")
        out[canonical] = (exact or found or [name])[0]
    return out


def header_names(path: Path) -> list[str]:
    """A delimited text file's column names, stripped, as written (pandas would rename repeats to NAME.1)."""
    with _open_text(path) as handle:
        if sep_line(path) is not None:
            handle.readline()
        return [c.strip() for c in next(csv.reader(handle, delimiter=csv_separator(path)), [])]


def _open_text(path: Path) -> IO[str]:
    """A delimited text file opened for its first lines (gzip-compressed or not), undecodable bytes replaced."""
    if file_suffix(path) in GZIP_SUFFIXES:
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    return path.open(encoding="utf-8-sig", errors="replace", newline="")


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        _refuse_repeated(path, header_names(path))  # before pandas renames a repeat to NAME.1
        frame = pd.read_csv(path, **pandas_csv_options(path))
    except UnicodeDecodeError:
        raise DataValidationError(_utf8_error(path)) from None
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: file is empty (no header, no rows)") from None
    except pd.errors.ParserError as exc:
        raise DataValidationError(f"{path}: malformed CSV: {_parser_detail(exc)}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # cut off, or not gzip at all
        raise DataValidationError(f"{path}: cannot decompress ({type(exc).__name__}: {exc}); the file looks "
                                  "truncated or is not gzip") from None
    if file_suffix(path) in GZIP_SUFFIXES:
        return frame  # a cut-off gzip stream fails to decompress: no tail to check
    _check_tail(path, frame.shape[1])
    return frame


def _utf8_error(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if file_suffix(path) in GZIP_SUFFIXES else path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return (f"{path}: not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                f"(line {line}); save the file as UTF-8")
    return f"{path}: not valid UTF-8; save the file as UTF-8"


def _parser_detail(exc: Exception) -> str:
    message = str(exc).strip()
    eof = re.search(r"EOF inside string starting at row (\d+)", message)
    if eof:  # pandas counts that row from 0 with the header as row 0
        return f"quoted field opened on line {int(eof.group(1)) + 1} never closes; the file looks truncated"
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if fields:
        expected, line, saw = fields.groups()
        return f"line {line} has {saw} fields but the header has {expected}"
    return message


def _check_tail(path: Path, n_columns: int) -> None:
    """A last line without newline and with too few fields is a cut-off file (pandas would pad it with NaN)."""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 65536))
        tail = handle.read()
    if tail.endswith(b"\n") or n_columns <= 1:
        return
    last = tail.rsplit(b"\n", 1)[-1]
    if b'"' in last or not last.strip():
        return
    n_fields = len(next(csv.reader([last.decode("utf-8", "replace")], delimiter=csv_separator(path))))
    if n_fields < n_columns:
        line = path.read_bytes().count(b"\n") + 1
        raise DataValidationError(f"{path}: malformed CSV: line {line} has {n_fields} of {n_columns} fields and "
                                  f"no final newline; the file looks truncated")


def id_strings(series: pd.Series) -> pd.Series:
    """Ids as stripped strings (whole numbers without ".0"), empty values as NaN."""
    if series.dtype.kind == "f":  # an integer id column with gaps comes back from parquet as float
        whole = series.dropna()
        if (whole == np.floor(whole)).all():
            series = series.astype("Int64")
    out = series.astype("str").str.strip()
    return out.mask(out == "")


def first_true(mask: pd.Series | np.ndarray) -> int:
    """0-based position of the first True in ``mask`` (which has one)."""
    return int(np.flatnonzero(np.asarray(mask))[0])


def cell_error(path: Path, column: str, row: int, message: str) -> DataValidationError:
    """An error naming the file, the column and 0-based data ``row`` (shown 1-based)."""
    return DataValidationError(f"{path}: column {column!r}, row {row + 1}: {message}")


# ------------------------------------------------------------------------------------------ typed columns
_WORD_LABELS = {"false": 0.0, "true": 1.0}
_NUMBER_LABELS = {0.0: 0.0, 1.0: 1.0, -1.0: 0.0}  # -1/1 is the libSVM/libFM convention of CTR benchmarks


def binary_labels(raw: pd.Series, path: Path, column: str) -> pd.Series:
    """0/1, -1/1, 1.0 or true/false (any case) as float 0.0/1.0; a missing or other value names its row."""
    if raw.dtype.kind in "iuf":  # typed (parquet, an encoded frame): no text to parse
        labels = raw.astype(np.float64).map(_NUMBER_LABELS)
    else:
        text = raw.astype("str").str.strip().str.lower()
        labels = text.map(_WORD_LABELS).fillna(pd.to_numeric(text, errors="coerce").map(_NUMBER_LABELS))
    if labels.isna().any():
        i = first_true(labels.isna())
        what = "missing label" if pd.isna(raw.iloc[i]) else f"label {str(raw.iloc[i])!r} is not binary"
        raise cell_error(path, column, i, f"{what}; expected 0/1, -1/1 or true/false")
    return labels.astype(np.float64)


def to_numbers(series: pd.Series, path: Path, column: str, allow_missing: bool = True) -> pd.Series:
    """Numbers as float64; a blank text cell is missing, as CSV's empty cell is (a Parquet "" was refused)."""
    values = pd.to_numeric(series, errors="coerce").astype("float64")
    bad = values.isna() & series.notna()
    bad[bad] = series[bad].astype("str").str.strip().ne("")
    if bad.any():
        i = first_true(bad)
        raise cell_error(path, column, i, f"{series.iloc[i]!r} is not a number")
    infinite = np.isinf(values.to_numpy())
    if infinite.any():  # standardised, it would turn the column's mean and spread into inf or NaN
        i = first_true(infinite)
        raise cell_error(path, column, i, f"{series.iloc[i]!r} is not a finite number")
    if not allow_missing and values.isna().any():
        raise cell_error(path, column, first_true(values.isna()), "missing value in a numeric column")
    return values


def looks_numeric(series: pd.Series) -> bool:
    """Whether most of the first 1000 non-empty values are numbers (to_numeric is slow on failing strings)."""
    head = series.dropna().iloc[:1000]
    return len(head) > 0 and pd.to_numeric(head, errors="coerce").notna().mean() >= 0.5


def is_text_type(kind: pa.DataType) -> bool:
    """Arrow's text types: ``string``, ``large_string`` (pandas 3, Polars) and ``string_view`` (Arrow's newer
    view layout, which writers may store)."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def plain_schema(schemas: Sequence[pa.Schema], columns: Sequence[str]) -> Optional[pa.Schema]:
    """A schema to read ``columns`` of Parquet files of ``schemas`` with, where a file stores one as
    ``string_view`` or ``binary_view``: that column as ``large_string`` / ``large_binary``, the others as the first
    file has them; None when no file stores a view. Ray Data cannot move a block of a view type between processes
    ("Unhandled Arrow array type") nor pandas hold one, so the scan casts them (``ray.data.read_parquet(schema=)``)."""
    plain = {pa.types.is_string_view: pa.large_string(), pa.types.is_binary_view: pa.large_binary()}

    def viewed(column: str) -> Optional[pa.DataType]:
        kinds = [s.field(column).type for s in schemas if column in s.names]
        return next((kind for test, kind in plain.items() for k in kinds if test(k)), None)

    if not any(viewed(c) for c in columns):
        return None
    kinds = {c: viewed(c) or next((s.field(c).type for s in schemas if c in s.names), None) for c in columns}
    return pa.schema([(c, kind) for c, kind in kinds.items() if kind is not None])
