"""Load a user's time-series file into the canonical long frame.

The canonical frame has exactly the columns ``unique_id`` (str), ``ds`` (datetime64[ns],
tz-naive) and ``y`` (float64, NaN allowed: cleaning fills gaps), sorted by ``unique_id, ds``
(stable, so duplicate timestamps keep their file order).

Sources: a local path, a ``file://`` URL or an ``s3://`` URI (whose bytes come from the ``fetch``
callable the caller passes, e.g. ``blocks.store.read_uri``). Formats: CSV, Parquet, Excel.
Layouts: *long* (id / timestamp / target columns named in :class:`DataConfig`) or *wide* (a
timestamp column plus one numeric column per series).

Every problem with the input raises :class:`~chronos_flows.core.errors.BadInputError` with one message
that names the file, the column or series, and what to do about it.
"""

from __future__ import annotations

import hashlib
import contextvars
import io
import json
from pathlib import Path, PurePosixPath
from typing import Callable, Optional
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from chronos_flows.config.params import DataConfig, resolve_data_path
from chronos_flows.core.errors import BadInputError

from chronos_flows.core.columns import ID, TARGET, TIME  # noqa: E402 - the one definition
CANONICAL_COLUMNS = (ID, TIME, TARGET)
DEFAULT_ID_COLUMN = DataConfig.model_fields["id_column"].default

_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".xlsx": "excel", ".xls": "excel"}
_MAX_SHOWN = 5

Fetch = Callable[[str], Optional[bytes]]


# --------------------------------------------------------------------------------------- sources
def _source_name(source: str) -> tuple[str, str]:
    """``(file name, stem)`` of a path, file:// URL or s3:// URI."""
    parsed = urlparse(source)
    path = parsed.path if parsed.scheme in ("s3", "file") else source
    name = PurePosixPath(path.replace("\\", "/")).name or source
    return name, PurePosixPath(name).stem or name


def _local_path(source: str) -> Path | None:
    """The local filesystem path of ``source``, or None if it is a remote URI."""
    parsed = urlparse(source)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise BadInputError(
                f"data file {source}: file:// URLs must point at this machine (file:///abs/path); "
                "use a local path or an s3:// URI"
            )
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme == "s3":
        return None
    # A Windows drive letter parses as a one-letter scheme; anything else with :// is unsupported.
    if "://" in source and len(parsed.scheme) > 1:
        raise BadInputError(
            f"data file {source}: unsupported URL scheme '{parsed.scheme}://'; "
            "use a local path, a file:// URL or an s3:// URI (set data.path)"
        )
    return Path(source).expanduser()


def _read_bytes(source: str, fetch: Fetch | None) -> bytes:
    path = _local_path(source)
    if path is None:
        if fetch is None:
            raise BadInputError(
                f"data file {source}: an s3:// URI needs a store reader; load it through the flow "
                "(which passes blocks.store.read_uri) or download the file and pass a local path"
            )
        try:
            data = fetch(source)
        except FileNotFoundError:
            data = None
        if data is None:
            raise BadInputError(
                f"data file {source} does not exist in the bucket; check data.path "
                "(e.g. `--set data.path=s3://bucket/key.csv`) and that the object was uploaded"
            )
        return bytes(data)
    if not path.exists():
        raise BadInputError(
            f"data file {path} does not exist; check data.path (e.g. `--set data.path=/abs/path/file.csv`)"
        )
    if path.is_dir():
        raise BadInputError(f"data file {path} is a directory; point data.path at a CSV, Parquet or Excel file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"data file {path} cannot be read ({exc.strerror or exc}); check its permissions") from None


def _detect_format(source: str, name: str, cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise BadInputError(
        f"data file {source}: unknown file type '{suffix or '(no extension)'}'; use .csv, .parquet/.pq "
        "or .xlsx, or name the format with `--set data.format=csv|parquet|excel`"
    )


# --------------------------------------------------------------------------------------- parsing
def _parse(data: bytes, fmt: str, source: str, cfg: DataConfig) -> pd.DataFrame:
    if not data.strip():
        raise BadInputError(f"data file {source} is empty (0 bytes of data); supply a file with a header and rows")
    buf = io.BytesIO(data)
    try:
        if fmt == "csv":
            # ids stay text ("007" is not 7); pandas ignores dtype entries for absent columns.
            dtype = {cfg.id_column: str} if cfg.id_column and cfg.layout == "long" else None
            return pd.read_csv(buf, dtype=dtype, skipinitialspace=True)
        if fmt == "parquet":
            return pd.read_parquet(buf)
        return _read_excel(buf, source, cfg)
    except BadInputError:
        raise
    except ImportError as exc:
        raise BadInputError(
            f"data file {source}: reading this {fmt} file needs an optional package ({exc}); "
            "save it as .xlsx, .csv or .parquet instead"
        ) from None
    except pd.errors.EmptyDataError:
        raise BadInputError(f"data file {source} is empty (no header, no rows); supply a file with a header and rows") from None
    except Exception as exc:  # the readers raise many unrelated types for a corrupt file
        raise BadInputError(
            f"data file {source} cannot be read as {fmt} ({type(exc).__name__}: {str(exc).strip()[:200]}); "
            f"check that it is a valid {fmt} file, or set the format with `--set data.format=csv|parquet|excel`"
        ) from None


def _read_excel(buf: io.BytesIO, source: str, cfg: DataConfig) -> pd.DataFrame:
    with pd.ExcelFile(buf) as book:
        sheets = [str(s) for s in book.sheet_names]
        if cfg.sheet is not None and cfg.sheet not in sheets:
            raise BadInputError(
                f"data file {source}: no sheet named '{cfg.sheet}' (sheets: {', '.join(sheets)}); "
                f"use `--set data.sheet=<name>`"
            )
        dtype = {cfg.id_column: str} if cfg.id_column and cfg.layout == "long" else None
        return book.parse(cfg.sheet if cfg.sheet is not None else 0, dtype=dtype)


def _row_label(fmt: str, index: int) -> str:
    # CSV/Excel: the header is line/row 1, so data row i (0-based) is line/row i + 2.
    if fmt == "csv":
        return f"line {index + 2}"
    if fmt == "excel":
        return f"row {index + 2}"
    return f"row {index}"


def _show_bad(values: pd.Series, fmt: str) -> str:
    shown = [f"{_row_label(fmt, int(i))}: {v!r}" for i, v in values.head(_MAX_SHOWN).items()]
    more = f" (and {len(values) - _MAX_SHOWN} more)" if len(values) > _MAX_SHOWN else ""
    return "; ".join(shown) + more


def _is_blank(col: pd.Series) -> pd.Series:
    blank = col.isna()
    if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
        blank |= col.astype(str).str.strip().eq("") & col.notna()
    return blank


def _parse_timestamps(col: pd.Series, source: str, fmt: str, what: str) -> pd.Series:
    """Parse to tz-naive datetime64[ns]; raise naming the first unparseable values."""
    blank = _is_blank(col)
    if blank.any():
        raise BadInputError(
            f"data file {source}: {what} has missing timestamps at {_show_bad(col[blank], fmt)}; "
            "every row needs a date/time: fill or remove those rows"
        )
    if pd.api.types.is_bool_dtype(col.dtype):
        raise BadInputError(f"data file {source}: {what} holds true/false values, not dates; set data.timestamp_column")
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_datetime64_any_dtype(col.dtype):
        whole = np.isclose(col, np.round(col))
        if bool(whole.all()) and bool(col.between(1000, 9999).all()):
            col = col.astype("int64").astype(str)  # bare years: 2001 → 2001-01-01
        else:
            raise BadInputError(
                f"data file {source}: {what} holds numbers ({_show_bad(col, fmt)}), not dates; "
                "store timestamps as dates such as 2024-01-31 (or set data.timestamp_column to the date column)"
            )
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        parsed = col
    elif pd.api.types.is_datetime64_any_dtype(col.dtype):
        parsed = col
    else:
        text = col.astype(str).str.strip()
        try:
            parsed = pd.to_datetime(text)
        except (ValueError, TypeError, OverflowError):
            try:
                parsed = pd.to_datetime(text, format="mixed", errors="coerce")
            except (ValueError, TypeError):  # mixed UTC offsets: compare as UTC wall time
                parsed = pd.to_datetime(text, format="mixed", errors="coerce", utc=True)
            bad = parsed.isna()
            if bad.any():
                raise BadInputError(
                    f"data file {source}: {what} has values that are not dates: {_show_bad(col[bad], fmt)}; "
                    "fix them (ISO dates like 2024-01-31 work best) or set data.timestamp_column to the date column"
                ) from None
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        _note(f"{what}: timezone {parsed.dt.tz} removed, local wall-clock times kept")
        parsed = parsed.dt.tz_localize(None)  # keep the local wall-clock time
    try:
        return parsed.astype("datetime64[ns]")
    except (ValueError, OverflowError) as exc:
        raise BadInputError(
            f"data file {source}: {what} has dates outside 1677-2262 ({exc}); fix those timestamps"
        ) from None


def _parse_target(col: pd.Series, source: str, fmt: str, what: str) -> pd.Series:
    """Parse to float64 (blank → NaN); raise naming the first non-numeric / infinite values."""
    if pd.api.types.is_bool_dtype(col.dtype):
        raise BadInputError(f"data file {source}: {what} holds true/false values, not numbers; set the target column")
    blank = _is_blank(col)
    if pd.api.types.is_numeric_dtype(col.dtype):
        num = col.astype("float64")
    else:
        cleaned = col.where(~blank).astype(object)
        num = pd.to_numeric(cleaned, errors="coerce").astype("float64")
        bad = num.isna() & ~blank
        if bad.any():
            raise BadInputError(
                f"data file {source}: {what} is not numeric: {_show_bad(col[bad], fmt)}; "
                "fix or blank out those values (blank values are filled by cleaning), "
                "or point data.target_column at the numeric column"
            )
    # infinite values are kept: cleaning drops the series that hold them, with the reason
    return num


def _missing_column(source: str, role: str, field: str, wanted: str, columns: list[str]) -> BadInputError:
    found = ", ".join(repr(c) for c in columns) or "(none)"
    hint = next((c for c in columns if c.strip().lower() == wanted.strip().lower()), None)
    did_you_mean = f" (did you mean {hint!r}?)" if hint is not None else ""
    return BadInputError(
        f"data file {source}: no {role} column '{wanted}'{did_you_mean}; columns found: {found}; "
        f"name the right one with `--set data.{field}=<column>`"
    )


def _from_long(raw: pd.DataFrame, cfg: DataConfig, source: str, stem: str, fmt: str) -> pd.DataFrame:
    columns = [str(c) for c in raw.columns]
    raw.columns = columns
    if cfg.timestamp_column not in columns:
        raise _missing_column(source, "timestamp", "timestamp_column", cfg.timestamp_column, columns)
    if cfg.target_column not in columns:
        raise _missing_column(source, "target", "target_column", cfg.target_column, columns)
    if cfg.id_column and cfg.id_column in columns:
        ids = raw[cfg.id_column]
        blank = _is_blank(ids)
        if blank.any():
            raise BadInputError(
                f"data file {source}: id column '{cfg.id_column}' has missing series ids at "
                f"{_show_bad(ids[blank], fmt)}; fill or remove those rows"
            )
        ids = ids.astype(str).str.strip()
    elif cfg.id_column and cfg.id_column != DEFAULT_ID_COLUMN:
        raise _missing_column(source, "series id", "id_column", cfg.id_column, columns)
    else:
        ids = pd.Series(stem, index=raw.index)  # one series, named after the file
    return pd.DataFrame(
        {
            ID: ids.astype(str),
            TIME: _parse_timestamps(raw[cfg.timestamp_column], source, fmt, f"timestamp column '{cfg.timestamp_column}'"),
            TARGET: _parse_target(raw[cfg.target_column], source, fmt, f"target column '{cfg.target_column}'"),
        }
    )


def _from_wide(raw: pd.DataFrame, cfg: DataConfig, source: str, fmt: str) -> pd.DataFrame:
    columns = [str(c) for c in raw.columns]
    raw.columns = columns
    if cfg.timestamp_column not in columns:
        raise _missing_column(source, "timestamp", "timestamp_column", cfg.timestamp_column, columns)
    series = [c for c in columns if c != cfg.timestamp_column]
    if not series:
        raise BadInputError(
            f"data file {source}: wide layout but no series columns besides '{cfg.timestamp_column}'; "
            "add one numeric column per series, or use `--set data.layout=long`"
        )
    if len(set(series)) != len(series):
        dups = sorted({c for c in series if series.count(c) > 1})
        raise BadInputError(f"data file {source}: series columns {dups} appear more than once; give each series a unique name")
    ds = _parse_timestamps(raw[cfg.timestamp_column], source, fmt, f"timestamp column '{cfg.timestamp_column}'")
    values = {c: _parse_target(raw[c], source, fmt, f"series column '{c}'") for c in series}
    n = len(raw)
    return pd.DataFrame(
        {
            ID: np.repeat(np.array(series, dtype=object), n),
            TIME: np.tile(ds.to_numpy(), len(series)),
            TARGET: np.concatenate([values[c].to_numpy() for c in series]),
        }
    )


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            ID: df[ID].astype(str),
            TIME: pd.to_datetime(df[TIME]).astype("datetime64[ns]"),
            TARGET: df[TARGET].astype("float64"),
        }
    )
    ids, times = out[ID].to_numpy(), out[TIME].to_numpy()
    ordered = len(out) < 2 or bool(np.all((ids[1:] > ids[:-1]) | ((ids[1:] == ids[:-1]) & (times[1:] >= times[:-1]))))
    if not ordered:
        _note("rows were not in (series, time) order: sorted")
    return out.sort_values([ID, TIME], kind="mergesort", ignore_index=True)


#: What ingest changed without refusing (timezones dropped, rows sorted), for the cleaning report.
_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("ingest_notes", default=None)


def _note(text: str) -> None:
    notes = _NOTES.get()
    if notes is not None and text not in notes:
        notes.append(text)


def ingest_notes(df: pd.DataFrame) -> list[str]:
    """The normalisations ingest applied to ``df`` (kept in ``df.attrs``)."""
    return list(df.attrs.get(NOTES_ATTR, []))


NOTES_ATTR = "chronos_flows_ingest_notes"


# --------------------------------------------------------------------------------------- public
def load_dataset(source: str | None, cfg: DataConfig, fetch: Fetch | None = None) -> pd.DataFrame:
    """Read ``source`` (path, file:// URL or s3:// URI; empty: the shipped example data, see
    :func:`~chronos_flows.config.params.resolve_data_path`) into the canonical long frame.

    ``fetch(source) -> bytes`` reads s3:// URIs (the flow passes ``blocks.store.read_uri``); it
    may return None or raise FileNotFoundError for a missing object. Local files are read directly.
    """
    source = resolve_data_path(source)
    name, stem = _source_name(source)
    data = _read_bytes(source, fetch)
    fmt = _detect_format(source, name, cfg)
    raw = _parse(data, fmt, source, cfg)
    if len(raw) == 0:
        found = ", ".join(repr(str(c)) for c in raw.columns) or "(none)"
        raise BadInputError(
            f"data file {source} has no data rows (columns found: {found}); supply at least one row per series"
        )
    token = _NOTES.set([])
    try:
        df = _from_long(raw, cfg, source, stem, fmt) if cfg.layout == "long" else _from_wide(raw, cfg, source, fmt)
        out = _canonical(df)
        out.attrs[NOTES_ATTR] = list(_NOTES.get() or [])
    finally:
        _NOTES.reset(token)
    return out


def fingerprint(df: pd.DataFrame) -> str:
    """sha256 hex of the canonical ``unique_id, ds, y`` content, independent of row order.

    Built from explicit little-endian bytes (not pandas' hash functions) so the same data gives
    the same fingerprint on every machine and pandas version. Extra columns are ignored.
    """
    missing = [c for c in CANONICAL_COLUMNS if c not in df.columns]
    if missing:
        raise BadInputError(f"cannot fingerprint a frame without columns {missing}; expected {list(CANONICAL_COLUMNS)}")
    frame = _canonical(df[list(CANONICAL_COLUMNS)])
    frame = frame.sort_values([ID, TIME, TARGET], kind="mergesort", na_position="last", ignore_index=True)
    y = frame[TARGET].to_numpy(dtype="<f8").copy()
    y[np.isnan(y)] = np.nan  # one NaN bit pattern
    y[y == 0] = 0.0  # -0.0 == 0.0
    h = hashlib.sha256(b"chronos-flows/dataset/v1\n")
    h.update(json.dumps(frame[ID].tolist(), ensure_ascii=False).encode("utf-8"))
    h.update(frame[TIME].to_numpy().astype("datetime64[ns]").view("<i8").tobytes())
    h.update(y.tobytes())
    return h.hexdigest()


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Serialise a (canonical or cleaned) frame to Parquet bytes, without the index."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def from_parquet_bytes(data: bytes) -> pd.DataFrame:
    """Read Parquet bytes written by :func:`to_parquet_bytes`; canonical columns get canonical dtypes."""
    try:
        df = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    except Exception as exc:  # pyarrow raises its own error types for corrupt input
        raise BadInputError(f"stored dataset is not valid Parquet ({type(exc).__name__}: {exc}); re-run ingest") from None
    missing = [c for c in CANONICAL_COLUMNS if c not in df.columns]
    if missing:
        raise BadInputError(f"stored dataset lacks columns {missing} (has {list(df.columns)}); re-run ingest")
    df[ID] = df[ID].astype(str)
    df[TIME] = pd.to_datetime(df[TIME]).astype("datetime64[ns]")
    df[TARGET] = df[TARGET].astype("float64")
    return df
