"""Metadata templates: turn a dataset row into the metadata string that conditions a document."""

from __future__ import annotations

import math
import numbers
import re
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..utils.checks import is_int

TEMPLATE_KINDS = ("url", "url_host", "url_path", "topic_format", "quality_score", "column", "format")
_DEFAULT_COLUMNS = {
    "url": ("url",),
    "url_host": ("url",),
    "url_path": ("url",),
    "topic_format": ("topic", "format"),
    "quality_score": ("int_score",),
}


class InvalidMetadataError(ValueError):
    """A metadata value that cannot be turned into a metadata string (unparseable URL, infinite or non-numeric score).

    `MetadataCollator` treats such a document as having no metadata (it is counted and logged), so one bad row does
    not stop a run; calling a template directly raises it.
    """


def is_missing(value) -> bool:
    """Whether a metadata value is missing: `None`, a blank string (`""`, or only whitespace such as `"   "` or
    `"\n"`: how CSV/JSON exports often write an absent value), a NaN (`float("nan")`, `numpy.nan`, a numpy float NaN),
    or pandas' `NA` / `NaT` (how pandas stores a missing cell, even one written as `None`: rows from
    `df.to_dict("records")` carry `nan`, as does `json.loads` of `NaN`) or numpy's `NaT`. pandas is not imported here:
    its missing markers can only exist where it is."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(value)
    pandas = sys.modules.get("pandas")
    if pandas is not None and (value is pandas.NA or value is pandas.NaT):
        return True
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.datetime64 | numpy.timedelta64) and bool(numpy.isnat(value))


#: What `urlsplit` reads as the path after a "scheme" that is really a host with a port (`site.com:8080/x`).
_PORT_THEN_PATH = re.compile(r"\d+(?:[/?#]|$)")


def _split(url: str):
    """`urlsplit`, reading a URL without a scheme (`www.site.com/page`, `site.com:8080/x`) as `//` + url: host + path."""
    try:
        parts = urlsplit(url)
        if (
            url
            and not parts.netloc
            and not url.startswith("/")
            and (not parts.scheme or _PORT_THEN_PATH.match(parts.path))
        ):
            parts = urlsplit("//" + url)
            if not parts.netloc or any(c.isspace() for c in parts.netloc):
                raise ValueError("no scheme and no host name")
    except ValueError as err:  # e.g. "Invalid IPv6 URL" for http://[::1/x
        raise InvalidMetadataError(f"cannot parse URL {url!r}: {err}") from err
    return parts


def _url_value(url, helper: str) -> str:
    """The URL `helper` reads, as the URL templates read it: a missing value (`None`, blank, NaN, see `is_missing`)
    is `""` (no metadata), UTF-8 `bytes` are decoded and whitespace is stripped (`normalize_url`); any other non-str
    value raises `InvalidMetadataError` naming the helper."""
    if is_missing(url):
        return ""
    if not isinstance(url, str | bytes | bytearray):
        raise InvalidMetadataError(
            f"{helper}(url) needs a str (or UTF-8 bytes) URL, got a {type(url).__name__} ({url!r:.80})."
        )
    if isinstance(url, bytes | bytearray):
        try:
            url = bytes(url).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidMetadataError(
                f"{helper}(url) got bytes that are not UTF-8 ({bytes(url)!r:.80}): {err}"
            ) from err
    return normalize_url(url)


def url_host(url: str | bytes | None) -> str:
    """Host of a URL (`https://en.wikipedia.org/wiki/X` -> `en.wikipedia.org`), as MeCo's short URL.

    The host is lower-cased and user info is dropped; a port is kept (`https://u:p@En.Wiki.ORG:8080/x` ->
    `en.wiki.org:8080`; MeCo's text split keeps the case and the user info).

    A URL without a scheme is read as host + path (`www.site.com/page` -> `www.site.com`). Raises
    `InvalidMetadataError` for a URL that `urllib.parse.urlsplit` cannot parse or that has no host (`/a/b`,
    `mailto:x`, `not a url`), and for a value that is not a str or bytes; an empty string is no metadata. The value
    is read as the `url_host` template reads it: `bytes` decoded as UTF-8, surrounding whitespace stripped, a missing
    value (`None`, blank, NaN) gives `""`.
    """
    url = _url_value(url, "url_host")
    host = _split(url).netloc.rpartition("@")[2].lower()
    if url and not host:
        raise InvalidMetadataError(f"URL {url!r} has no host.")
    return host


def url_path(url: str | bytes | None) -> str:
    """Path, `?query` and `#fragment` of a URL (the paper's `url_suffix` builder); `InvalidMetadataError` if unparseable.

    A URL without a scheme is read as host + path (`www.site.com/page?q=1` -> `/page?q=1`). The value is read as
    the `url_path` template reads it (see `url_host`): `bytes` decoded (the result is always a str), whitespace
    stripped, a missing value gives `""`, a value that is not a str or bytes raises `InvalidMetadataError`.
    """
    parts = _split(_url_value(url, "url_path"))
    out = parts.path
    if parts.query:
        out += f"?{parts.query}"
    if parts.fragment:
        out += f"#{parts.fragment}"
    return out


def _decoded(value, column: str):
    """`value` with `bytes` / `bytearray` (an Arrow/parquet `binary` column, warcio records) decoded as UTF-8, so a
    template never reads the bytes' repr (`"b'https://...'"`); `InvalidMetadataError` for bytes that are not UTF-8."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidMetadataError(
                f"metadata column {column!r} holds bytes that are not UTF-8 ({bytes(value)!r:.80}): {err}"
            ) from err
    return value


def normalize_url(value, column: str = "url") -> str:
    """The URL a URL template reads from a column value: UTF-8 `bytes` decoded, surrounding whitespace stripped
    (`" https://a.org/x\\n"` -> `"https://a.org/x"`). `InvalidMetadataError` for a value that is not a str or bytes
    (a bool, a number, a list: its `str()` is no URL). Guided generation reads its metadata strings with it too, so
    they get the prefix the URL templates trained."""
    value = _decoded(value, column)
    if not isinstance(value, str):
        raise InvalidMetadataError(
            f"URL column {column!r} holds a {type(value).__name__} ({value!r:.80}), not a str (or UTF-8 bytes)."
        )
    return value.strip()  # "a.com/x\n" from a line-based export is the URL a.com/x


def _score(value, column: str) -> int:
    """An integer quality score from a number or numeric string; inf and non-numeric values (a `"nan"` string too)
    are invalid."""
    if isinstance(value, bool):
        raise InvalidMetadataError(f"quality score column {column!r} holds a bool ({value!r}), not a number.")
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise InvalidMetadataError(f"quality score column {column!r} holds {value!r}, not a number.") from err
    if not math.isfinite(number):
        raise InvalidMetadataError(f"quality score column {column!r} holds {value!r}, not a finite number.")
    return int(round(number))


@dataclass(frozen=True)
class MetadataTemplate:
    """Builds the metadata string of one example.

    Args:
        kind (`str`): One of `"url"` (full URL), `"url_host"` (host only), `"url_path"` (path + query + fragment),
            `"topic_format"` (`"{topic}, {format}"`, WebOrganizer-style labels), `"quality_score"` (an integer
            score such as FineWeb-Edu's `int_score`), `"column"` (the value of any column) or `"format"` (a Python
            format string over columns, e.g. `"{source} | {url}"`).
        columns (`tuple[str, ...]`): Dataset columns the template reads.
        fmt (`str`, *optional*): The format string for `kind="format"`.
        max_chars (`int`, *optional*): Cut the metadata string to this many characters (long URLs eat context).

    A missing value (`None`, a blank string, a NaN, pandas' `NA` / `NaT`: see `is_missing`) gives `""` (no metadata)
    in every kind; `"format"` renders a missing field as `""`, and gives `""` when all its fields are missing. The URL
    kinds strip whitespace around the URL (`" https://a.org/x\\n"` is `https://a.org/x`, see `normalize_url`), and every
    kind strips whitespace around its result (after the `max_chars` cut), as guided generation reads a metadata string. A
    `bytes` value (an Arrow/parquet `binary` column) is decoded as UTF-8 in every kind. A value that cannot be used (a
    URL `urlsplit` rejects, a URL value that is not a str or bytes such as `True` or a number, bytes that are not
    UTF-8, an infinite or non-numeric quality score, a format string that fails on the row) raises
    `InvalidMetadataError`; `MetadataCollator` then trains that document without metadata and counts it.
    """

    kind: str
    columns: tuple[str, ...]
    fmt: str | None = None
    max_chars: int | None = None

    def __call__(self, example: Mapping) -> str:
        values = []
        for column in self.columns:
            if column not in example:
                raise ValueError(
                    f"metadata column {column!r} is missing from the example (keys: {sorted(example)}); with a "
                    "Trainer set remove_unused_columns=False so metadata columns reach the collator, or choose "
                    "the template's column with metadata_template(..., column=...)."
                )
            values.append(_decoded(example[column], column))
        missing = [is_missing(v) for v in values]
        if self.kind == "format":
            if all(missing):  # a row without metadata, not the format's literal text (" | ")
                return ""
            try:
                text = self.fmt.format(**{c: ("" if m else v) for c, v, m in zip(self.columns, values, missing)})
            except (ValueError, TypeError, KeyError, IndexError) as err:
                raise InvalidMetadataError(
                    f"fmt={self.fmt!r} cannot format {dict(zip(self.columns, values))}: {err}"
                ) from err
        elif any(missing):
            text = ""
        elif self.kind in ("url", "url_host", "url_path"):
            url = normalize_url(values[0], self.columns[0])
            text = url if self.kind == "url" else url_host(url) if self.kind == "url_host" else url_path(url)
        elif self.kind == "topic_format":
            text = ", ".join(str(v) for v in values)
        elif self.kind == "quality_score":
            text = str(_score(values[0], self.columns[0]))
        else:
            text = str(values[0])
        if self.max_chars is not None:
            text = text[: self.max_chars]
        # stripped as guided generation reads a metadata string, so both condition on the same prefix ids (a
        # `max_chars` cut ending in a space, a `column` / `format` value with whitespace around it trained verbatim)
        return text.strip()


def metadata_template(
    kind: str = "url",
    column: str | Sequence[str] | None = None,
    fmt: str | None = None,
    max_chars: int | None = None,
) -> MetadataTemplate:
    """Create a `MetadataTemplate`.

    Args:
        kind (`str`, *optional*, defaults to `"url"`): See `MetadataTemplate`.
        column (`str` or `Sequence[str]`, *optional*): Column(s) to read; defaults: `url` for URL kinds,
            `(topic, format)` for `topic_format`, `int_score` for `quality_score`. Required for `kind="column"`.
        fmt (`str`, *optional*): Format string for `kind="format"`; its fields name the columns.
        max_chars (`int`, *optional*): Truncate the metadata string to this many characters.

    Example:
        ```python
        >>> metadata_template("url_host")({"url": "https://en.wikipedia.org/wiki/Bern"})
        'en.wikipedia.org'
        >>> metadata_template("topic_format", column=["topic", "format"])({"topic": "Science", "format": "Tutorial"})
        'Science, Tutorial'
        ```
    """
    if kind not in TEMPLATE_KINDS:
        raise ValueError(f"kind must be one of {TEMPLATE_KINDS}, got {kind!r}.")
    if max_chars is not None and (not is_int(max_chars) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}.")
    if kind == "format":
        if not isinstance(fmt, str) or not fmt:
            raise ValueError("kind='format' needs fmt, a format string over columns such as '{source} | {url}'.")
        if column is not None:
            raise ValueError(
                "kind='format' reads the columns its fmt fields name; drop column (or use kind='column')."
            )
        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(fmt) if f is not None]
        except ValueError as err:  # unbalanced braces
            raise ValueError(f"fmt={fmt!r} is not a valid format string: {err}.") from None
        fields = [f for f, _, _ in parsed]
        # every field a column name (no positional `{}`, attribute or index), a known conversion, no nested field in
        # the format spec: any of these would fail on every row, and every document would train without metadata
        if (
            not fields
            or any(not f.isidentifier() for f in fields)
            or any(conv not in (None, "r", "s", "a") for _, _, conv in parsed)
            or any("{" in (spec or "") for _, spec, _ in parsed)
        ):
            raise ValueError(
                f"fmt={fmt!r} must name columns with plain fields like '{{url}}' (optionally '!r'/'!s'/'!a' and a "
                "format spec without nested fields)."
            )
        return MetadataTemplate(kind, tuple(dict.fromkeys(fields)), fmt, max_chars)
    if fmt is not None:
        raise ValueError("fmt is only used with kind='format'.")
    if column is None:
        if kind == "column":
            raise ValueError("kind='column' needs column=<name of the dataset column holding the metadata>.")
        columns = _DEFAULT_COLUMNS[kind]
    else:
        if not isinstance(column, str | Sequence):
            raise ValueError(
                f"column must be a column name (str) or a list of names, got {type(column).__name__} {column!r}; "
                f"e.g. column='url' (kind={kind!r})."
            )
        columns = (column,) if isinstance(column, str) else tuple(column)
    expected = 2 if kind == "topic_format" else 1
    if len(columns) != expected or not all(isinstance(c, str) and c for c in columns):
        raise ValueError(f"kind={kind!r} reads {expected} column name(s), got {column!r}.")
    return MetadataTemplate(kind, columns, None, max_chars)
