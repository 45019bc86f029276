"""A robots.txt parser and matcher with RFC 9309 semantics, written for bulk decisions over a crawl.

Line syntax, grouping and agent matching follow RFC 9309 and, where the RFC leaves room, Google's reference parser
(the RFC's authors' implementation): product tokens are the leading run of letters, `-` and `_`; a group runs from its
user-agent lines to the next user-agent line that follows a rule (other lines do not end it); keys are matched
case-insensitively by prefix, with the reference parser's accepted typos and a missing colon; a (partial) UTF-8 byte
order mark is skipped; lines are cut after 8 * 2083 bytes. Paths are compared in one canonical percent-encoded form on
both sides (non-ASCII octets encoded, hex digits upper case, unreserved characters decoded), so raw and encoded
spellings of a path match each other (RFC 9309 section 2.2.2). A file that is not valid UTF-8 keeps the value of each
byte that is not: it is decoded with `errors="surrogateescape"` (byte 0xE9 is U+DCE9) and such a byte in a rule is
encoded as that byte (`%E9`), as Google's parser reads the bytes. Where this differs from the reference parser, see
docs/compliance.md ("Conformance").

`RobotsTxt.parse(text)` builds the rule groups once; `RobotsTxt.matcher(agent)` returns a compiled `RuleMatcher`
whose `allowed(path)` is a single regular-expression match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = [
    "ALLOW_ALL",
    "DISALLOW_ALL",
    "RobotsTxt",
    "RuleMatcher",
    "authority_end",
    "authority_start",
    "canonical_path",
    "check_user_agents",
    "path_from",
    "product_token",
    "remove_dot_segments",
    "url_path",
]

#: Longest line the reference parser keeps, in bytes (8 * the longest URL browsers accept, minus the terminator).
MAX_LINE_BYTES = 8 * 2083 - 1
#: RFC 9309 section 2.5: crawlers must parse at least 500 KiB; content after that limit is ignored.
MAX_ROBOTS_BYTES = 500 * 1024

_TOKEN = re.compile(r"[A-Za-z_-]*")
# A crawler name a caller checks: a product token, alone or with a version (`CCBot/2.0`). Digits may follow its first
# character (`AI2Bot`, a crawler's real name), though the token it is matched by stops before them, as a robots.txt
# line's `User-agent: AI2Bot` does. A space, `*`, `(` ... would cut the name to another token.
_AGENT_NAME = re.compile(r"[A-Za-z_-][A-Za-z0-9_-]*(?:/[^\s/]+)?")
# A crawler's product token inside a full User-Agent header (`...; compatible; GPTBot/1.2; ...`), for the error message.
_TOKEN_IN_HEADER = re.compile(r"compatible;\s*([A-Za-z_-][A-Za-z0-9_-]*)|\b([A-Za-z_-][A-Za-z0-9_-]*bot)\b", re.I)
_WS = " \t\n\r\f\v"
_DISALLOW_KEYS = ("disallow", "dissallow", "dissalow", "disalow", "diasllow", "disallaw")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = "0123456789ABCDEF"
# Characters that are never valid raw in a URI path: encoded on both sides so raw and encoded spellings agree.
_ENCODE_ASCII = frozenset(' "<>\\^`{|}') | frozenset(chr(i) for i in range(0x21)) | {"\x7f"}
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_NEEDS_WORK = re.compile(r'[\x00-\x20"<>\\^`{|}\x7f%]|[^\x00-\x7f]')
# A backslash ends the host as '/' does, as browsers (the WHATWG URL standard) and Google's parser read web URLs.
_PATH_START = re.compile(r"[/\\?;#]")
# RFC 3986 scheme and separator; a "://" after the first '/', '?' or '#' is part of the path or query, not a scheme.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# The special web schemes written without the two slashes (`http:a.com/p`, `https:/a.com`): browsers (the WHATWG URL
# standard) still read the host after them.
_WEB_SCHEME_NO_SLASHES = re.compile(r"(?:https?|ftp|wss?):[/\\]*", re.IGNORECASE)


def product_token(agent: str) -> str:
    """The product token of a user-agent name, lower case: its leading run of letters, `-` and `_`.

    `"CCBot/2.0"` -> `"ccbot"`, `"Applebot-Extended"` -> `"applebot-extended"`, `"FOO BAR"` -> `"foo"`.
    """
    if not isinstance(agent, str):
        raise TypeError(f"agent must be a crawler name (str), e.g. 'GPTBot', got {type(agent).__name__}.")
    return _TOKEN.match(agent).group().lower()


def _suggested_token(agent: str) -> str | None:
    """A product token the caller probably meant by a name that is not one: the name without its spaces
    (`"GPT Bot"` -> `"GPTBot"`), or the crawler a full User-Agent header names (`compatible; GPTBot/1.2`)."""
    squeezed = "".join(agent.split())
    if squeezed != agent and _AGENT_NAME.fullmatch(squeezed):
        return squeezed
    for m in _TOKEN_IN_HEADER.finditer(agent):
        name = m.group(1) or m.group(2)
        if name.lower() not in ("mozilla", "khtml"):
            return name
    return None


def check_user_agents(agents: Sequence[str], arg: str = "user_agents") -> None:
    """Refuse crawler names that are not a product token, alone or with a version (`"GPTBot"`, `"CCBot/2.0"`), or
    `"*"`: robots.txt groups are matched by the name's product token (its leading letters, `-` and `_`), so a full
    User-Agent header (`"Mozilla/5.0 (...; GPTBot/1.2; ...)"` is the token `mozilla`) or a name with a space
    (`"GPT Bot"` is `gpt`) would be decided by another crawler's group. The `ValueError` names `arg`, each such name
    with the token it would be checked as, and the token to pass instead where one can be read from it."""
    bad, hints = [], []
    for agent in agents:
        if agent == "*" or _AGENT_NAME.fullmatch(agent):
            continue
        token = product_token(agent)
        if token:
            bad.append(f"{agent!r} (would be checked as {token!r})")
        else:
            bad.append(f"{agent!r} (no product token: a name starts with a letter, '-' or '_')")
        hint = _suggested_token(agent)
        if hint is not None and hint not in hints:
            hints.append(hint)
    if bad:
        fix = f"pass {', '.join(map(repr, hints))}" if hints else "pass the crawler's product token"
        raise ValueError(
            f"{arg} {', '.join(bad)}: a crawler is named by its product token, alone or with a version (letters, "
            "digits, '-' and '_', e.g. 'GPTBot' or 'CCBot/2.0'), not by a full User-Agent header or a name with spaces "
            f"or other characters; robots.txt groups are matched by that token, so another crawler's group would "
            f"decide. {fix[0].upper() + fix[1:]} instead; use '*' for a crawler without a group of its own."
        )


def _pct_upper(m: re.Match) -> str:
    code = m.group(1).upper()
    char = chr(int(code, 16))
    return char if char in _UNRESERVED else "%" + code


def canonical_path(path: str) -> str:
    """Percent-encode non-ASCII octets (UTF-8) and characters invalid in URIs, upper-case the hex digits of existing
    escapes and decode escapes of unreserved characters (RFC 3986 section 6.2.2, as RFC 9309 section 2.2.2 asks).

    A byte that was not UTF-8 in the robots.txt (decoded with `errors="surrogateescape"`: byte 0xE9 is U+DCE9) is
    encoded as that one byte (`%E9`), as Google's parser encodes the bytes of a rule: `Disallow: /caf\xe9/` in a
    Latin-1 file matches the site's `/caf%E9/` links."""
    if _NEEDS_WORK.search(path) is None:
        return path
    if "%" in path:
        path = _PCT.sub(_pct_upper, path)
    out = []
    for char in path:
        if char.isascii() and char not in _ENCODE_ASCII:
            out.append(char)
        elif "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8: its own value
            b = ord(char) - 0xDC00
            out.append("%" + _HEX[b >> 4] + _HEX[b & 15])
        else:
            out.extend("%" + _HEX[b >> 4] + _HEX[b & 15] for b in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def authority_start(url: str) -> int:
    """Index where the host part of `url` starts: after `scheme://`, after a leading `//`, after a web scheme written
    without its slashes (`http:a.com`), or 0 (scheme-less, or a URI without an authority such as `mailto:`).

    `"://"` counts as a scheme separator only after a valid scheme at the start of `url`, so in
    `a.com/go?u=https://b.com/x` the host is `a.com`.
    """
    m = _WEB_SCHEME_NO_SLASHES.match(url)  # also `https://`, and `https:///a.com`, `https://\\a.com` as browsers
    if m is not None:
        return m.end()
    m = _SCHEME.match(url)
    if m is not None:
        return m.end()
    return 2 if url.startswith("//") else 0


def authority_end(url: str, start: int) -> int:
    """Index of the first `/` or `\\` at or after `start` (where the path of `url` starts when its host starts at
    `start`; a backslash there is read as `/`, as browsers and Google's parser read `https://a.com\\p`), or -1 when
    there is none or a `?` or `#` comes first (`https://a.com?u=/x` has no path; its slash is part of the query)."""
    slash = url.find("/", start)
    back = url.find("\\", start) if slash == -1 else url.find("\\", start, slash)
    end = slash if back == -1 else back
    if end != -1 and (url.find("?", start, end) != -1 or url.find("#", start, end) != -1):
        return -1
    return end


def url_path(url: str) -> str:
    """The path, parameters and query of `url` (no fragment), starting with `/`, in canonical form, dot segments
    removed (RFC 3986 section 5.2.4: `/pub/../private` is `/private`).

    Works for absolute URLs, `//host/path`, scheme-less `host/path` and bare paths; no path gives `/`.
    """
    if url.startswith("/") and not url.startswith("//"):
        start = None  # already a path
    else:
        start = authority_start(url)
    if start is None:
        path_start = 0
    else:
        m = _PATH_START.search(url, start)
        if m is None or m.group() == "#":
            return "/"
        path_start = m.start()
    return path_from(url, path_start)


def path_from(url: str, path_start: int) -> str:
    """Canonical path of `url` whose path (or `?query`) starts at index `path_start`."""
    end = url.find("#", path_start)
    path = url[path_start:] if end == -1 else url[path_start:end]
    if path[:1] != "/":
        path = "/" + (path[1:] if path[:1] == "\\" else path)
    path = canonical_path(path)
    if "*" in path or "$" in path:  # RFC 9309 section 2.2.3: a rule's `%2A` / `%24` matches them (`_pattern_regex`)
        path = path.replace("*", "%2A").replace("$", "%24")
    if "/." in path:  # `/pub/../private` is the `/private` that an HTTP client requests
        path, q, query = path.partition("?")
        path = remove_dot_segments(path) + q + query
    return path


_DOT_SEGMENTS = frozenset((".", "%2e"))
_DOT_DOT_SEGMENTS = frozenset(("..", ".%2e", "%2e.", "%2e%2e"))


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on a path that starts with `/` (no query): `.` segments dropped, `..` removes the
    segment before it (`/pub/../private/a` -> `/private/a`). As in browsers (WHATWG URL), `%2e` spells a dot there
    (`/pub/%2e%2e/private`). This is the path a crawler requests, so it is the path robots.txt rules are matched
    against."""
    segments = path.split("/")[1:]
    out: list[str] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        low = segment.lower() if "%" in segment else segment
        if low in _DOT_SEGMENTS or low in _DOT_DOT_SEGMENTS:
            if low in _DOT_DOT_SEGMENTS and out:
                out.pop()
            if i == last:
                out.append("")  # `/a/b/..` is the folder `/a/`
        else:
            out.append(segment)
    return "/" + "/".join(out)


_BOM = b"\xef\xbb\xbf"


def _decode_bytes(body: bytes) -> str:
    """A robots.txt body as text: without one (partial) UTF-8 byte order mark, decoded as UTF-8 with each byte that is
    not UTF-8 kept as its surrogate escape (`errors="surrogateescape"`: byte 0xE9 is U+DCE9), so that a rule keeps
    the byte's value (`canonical_path` encodes it as `%E9`) and `_cut_utf8` measures the text in the bytes the server
    sent. `_encode_bytes` gives the bytes back."""
    # A UTF-8 byte order mark, or any leading part of one, is skipped (as the reference parser does); only one.
    for n in (3, 2, 1):
        if body[:n] == _BOM[:n]:
            body = body[n:]
            break
    return body.decode("utf-8", errors="surrogateescape")


# A byte order mark, or a leading part of one, in a text: U+FEFF, or the surrogate escapes of its bytes (what decoding
# `EF BB`, or `EF`, followed by anything but the rest of the mark gives with errors="surrogateescape").
_BOM_TEXTS = ("\ufeff", "\udcef\udcbb\udcbf", "\udcef\udcbb", "\udcef")


def _without_bom(text: str) -> str:
    """`text` without one leading byte order mark, or leading part of one as the surrogate escapes of its bytes: what
    `_decode_bytes` skips from the bytes `text` stands for. A str holding `b"\\xef\\xbbUser-agent: *"` decoded with
    surrogateescape used to keep the escapes, which spoiled its first line: the bytes disallowed a URL its str
    allowed."""
    for mark in _BOM_TEXTS:
        if text.startswith(mark):
            return text[len(mark) :]
    return text


def _encode_bytes(text: str) -> bytes:
    """The bytes that `_decode_bytes` (and Google's parser) read as the text the parser reads from `text`: its UTF-8,
    each surrogate escape written as the byte it stands for, and a byte order mark in front where the bytes would
    otherwise start like one (the reader would skip that part). A text that starts with U+FEFF (a store's text keeps
    the mark the parser skips in front of a second one) is written as it is."""
    raw = text.encode("utf-8", "surrogateescape")
    if raw[:1] == _BOM[:1] and not text.startswith("\ufeff"):
        raw = _BOM + raw
    return raw


def _without_cut_line(head: str | bytes, rest: str | bytes) -> str | bytes:
    """`head`, the first 500 KiB of a longer robots.txt (`rest`: what follows the limit, empty when nothing was cut),
    without its last line when the limit falls inside that line: the part of a line before the limit is not what the
    site wrote (`Disallow: /private/archive` cut to `Disallow: /` would disallow the whole site)."""
    breaks = ("\n", "\r") if isinstance(head, str) else (b"\n", b"\r")
    if not rest or head[-1:] in breaks or rest[:1] in breaks:
        return head
    return head[: max(head.rfind(breaks[0]), head.rfind(breaks[1])) + 1]


def _decode(body: str | bytes) -> str:
    if isinstance(body, bytes | bytearray):
        body = bytes(body)
        return _decode_bytes(_without_cut_line(body[:MAX_ROBOTS_BYTES], body[MAX_ROBOTS_BYTES : MAX_ROBOTS_BYTES + 1]))
    head = _cut_utf8(body, MAX_ROBOTS_BYTES)
    return _without_bom(_without_cut_line(head, body[len(head) : len(head) + 1]))


_ONE_BYTE = re.compile("[\udc80-\udcff]")


def _cut_utf8(text: str, limit: int) -> str:
    """`text` cut after `limit` bytes of UTF-8, counting each surrogate escape as one byte.

    Limits on a robots.txt apply to the bytes the server sent. A text decoded from them (`_decode_bytes`, a store's
    texts) has one surrogate escape per byte that is not UTF-8: counting it as the byte it stands for keeps a Latin-1
    file of 400 KiB within the 500 KiB limit. Every other character counts as its UTF-8 bytes, U+FFFD too: in a text
    decoded with surrogate escapes it is a real U+FFFD the server sent as the three bytes `EF BF BD`, and Google's
    parser counts those three. A snapshot written before 2026-12-04 holds one U+FFFD per byte that was not UTF-8,
    which nothing in the snapshot tells apart from a real one (no format marks which decoding wrote it): those count
    three bytes too (before 2026-12-04 every U+FFFD counted one), so a line of such a snapshot with more than about
    5,500 of them, or a file near 500 KiB with many, is cut earlier than the server's bytes were; fetch the robots.txt
    again to measure it as sent.
    """
    if len(text) * 4 <= limit:  # cheap: 4 bytes per character at most
        return text
    measured = _ONE_BYTE.sub("\x00", text) if not text.isascii() else text  # one byte each, one character each
    raw = measured.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    head = raw[:limit]
    try:
        kept = len(head.decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError as err:  # the limit falls inside a character: it is not kept
        kept = len(head[: err.start].decode("utf-8", "surrogatepass"))
    return text[:kept]


def _cut(line: str) -> str:
    """`line` cut after `MAX_LINE_BYTES` bytes, as the reference parser cuts it: when the limit falls inside a
    character, the bytes of it before the limit are kept, each as its surrogate escape (a byte that is not UTF-8), so
    that a rule ends with their escapes (`%F0%9F`), as in Google's parser, not one to three bytes shorter (a shorter
    `Disallow` rule matched paths Google's parser allows, a shorter `Allow` rule paths it disallows)."""
    head = _cut_utf8(line, MAX_LINE_BYTES)
    if len(head) == len(line):
        return head
    used = len((_ONE_BYTE.sub("\x00", head) if not head.isascii() else head).encode("utf-8", "surrogatepass"))
    if used < MAX_LINE_BYTES:  # the limit falls inside line[len(head)]
        partial = line[len(head)].encode("utf-8", "surrogatepass")[: MAX_LINE_BYTES - used]
        head += partial.decode("utf-8", "surrogateescape")  # continuation or lead bytes alone: one escape each
    return head


def _key_value(line: str) -> tuple[str, str] | None:
    line = line.split("#", 1)[0].strip(_WS)
    if not line:
        return None
    sep = line.find(":")
    if sep == -1:  # the reference parser accepts "Disallow /x" (exactly two words separated by spaces/tabs)
        parts = [p for p in re.split(r"[ \t]+", line) if p]
        if len(parts) != 2:
            return None
        key, value = parts[0], parts[1].strip(_WS)  # `Disallow \f/x`: the value without its whitespace, as with a colon
    else:
        key, value = line[:sep].strip(_WS), line[sep + 1 :].strip(_WS)
    return (key.lower(), value) if key else None


def _kind(key: str) -> str | None:
    if key.startswith(("user-agent", "useragent", "user agent")):
        return "agent"
    if key.startswith("allow"):
        return "allow"
    if key.startswith(_DISALLOW_KEYS):
        return "disallow"
    return None


def _pattern_regex(pattern: str) -> str:
    r"""A regular expression for a rule pattern (`*` any run of characters, a final `$` the end of the path) that
    matches in time linear in the path's length (times the pattern's length at most), whatever the pattern.

    The literal parts between the `*` are found each at its first occurrence after the previous one, in an atomic
    group (`(?>.*?part)`) that is never re-entered when a later part fails: a pattern `/*a*a*b` costs one scan of the
    path, not one try per way of placing the `a`s (a backtracking `.*` costs about L**k steps for k wildcards on a
    path of L characters). The first occurrence is always the right choice: if the parts can be placed at all, they
    can be placed with each one at its first occurrence after the previous one, which leaves the most room for the
    rest. With `$`, the last part must end the path: `.*part\Z`, tried only after the parts before it are placed.

    A `$` that does not end the pattern is a literal `$`; it matches the `%24` that a URL's `$` is written as (RFC
    9309 section 2.2.3: a rule matches a URL's `*` or `$` by its escape, `Disallow: /foo-%24` disallows `/foo-$`, so
    `path_from` writes them `%2A` and `%24`). The pattern itself, whose length decides precedence, is unchanged."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    if "$" in body:
        body = body.replace("$", "%24")
    first, *rest = (re.escape(part) for part in re.sub(r"\*+", "*", body).split("*"))
    end = ""
    if anchored:
        end = (".*" + rest.pop() if rest else "") + r"\Z"
    return first + "".join(f"(?>.*?{part})" for part in rest if part) + end


class RuleMatcher:
    """The merged rules of the groups that apply to one agent, compiled into one regular expression.

    Rules are tried longest first (RFC 9309: the most specific match wins; `Allow` wins ties), so the first matching
    alternative decides. Each alternative ends with an empty capturing group that names its rule, so the regex engine
    reaches a group only in the alternative that matched, and a match costs time linear in the number of rules. (A
    group opened at the start of every alternative made each alternative tried clear the marks of all the groups
    before it: time quadratic in the number of rules, about 27 ms per URL with 5,000 rules.)

    Args:
        rules (`Sequence[tuple[bool, str]]`): `(is_allow, canonical pattern)` pairs.
    """

    __slots__ = ("rules", "signature", "_regex", "_allow", "disallows_everything")

    def __init__(self, rules: Sequence[tuple[bool, str]]):
        expanded = set()
        for is_allow, pattern in rules:
            if not pattern:
                continue  # an empty rule matches with priority 0, which never decides
            expanded.add((is_allow, pattern))
            if is_allow:  # reference parser: "Allow: /d/index.htm*" also allows "/d/" itself
                slash = pattern.rfind("/")
                if slash != -1 and pattern[slash:].startswith("/index.htm"):
                    expanded.add((True, pattern[: slash + 1] + "$"))
        # longest first; on equal length Allow first
        ordered = sorted(expanded, key=lambda r: (-len(r[1]), not r[0], r[1]))
        self.rules = tuple(ordered)
        self.signature = self.rules
        self.disallows_everything = any(not a and p.rstrip("*") in ("", "/") for a, p in ordered) and all(
            not a for a, _ in ordered
        )
        self._allow = tuple(a for a, _ in ordered)
        self._regex = (
            re.compile("|".join(f"{_pattern_regex(p)}()" for _, p in ordered), re.DOTALL) if ordered else None
        )

    @property
    def can_disallow(self) -> bool:
        return any(not a for a in self._allow)

    def allowed(self, path: str) -> bool:
        """Decision for a canonical path (see `url_path`)."""
        if path == "/robots.txt":  # RFC 9309 section 2.2.2: implicitly allowed
            return True
        m = None if self._regex is None else self._regex.match(path)
        return True if m is None else self._allow[m.lastindex - 1]


ALLOW_ALL = RuleMatcher(())
DISALLOW_ALL = RuleMatcher(((False, "/"),))


@lru_cache(maxsize=4096)
def _caller_token(agent: str) -> str:
    """The product token `RobotsTxt.matcher` looks `agent` up by (`""` for `"*"`), once the name is checked."""
    if not isinstance(agent, str):
        raise TypeError(f"agent must be a crawler name (str), e.g. 'GPTBot', got {type(agent).__name__}.")
    if agent == "*":
        return ""
    check_user_agents([agent], "agent")
    return product_token(agent)


class RobotsTxt:
    """A parsed robots.txt: its groups, each with the product tokens it names and its rules.

    Use `RobotsTxt.parse(text_or_bytes)`, then `allowed(url, agent)` for one decision or `matcher(agent)` for a
    compiled matcher to reuse over many URLs.
    """

    __slots__ = ("groups", "_matchers", "_by_groups")

    def __init__(self, groups: list[tuple[frozenset, bool, list[tuple[bool, str]]]]):
        #: `(tokens, is_global, rules)` per group; `tokens` are lower-case product tokens.
        self.groups = groups
        self._matchers: dict[str, RuleMatcher] = {}
        # one matcher per set of chosen groups: every token without a group of its own gets the global groups' rules,
        # and tokens named by the same groups get the same rules, so they share one compiled matcher (a 500 KiB file
        # of `*` rules was compiled once per checked agent: 13 times for the default agents)
        self._by_groups: dict[tuple, RuleMatcher] = {}

    @classmethod
    def parse(cls, body: str | bytes) -> RobotsTxt:
        """Parse a robots.txt body: the bytes a server sent (`bytes`, `bytearray`) or its text (`str`)."""
        if not isinstance(body, str | bytes | bytearray):
            raise TypeError(
                f"body must be the robots.txt as str or bytes, got {type(body).__name__}; for a host without a "
                "robots.txt (everything allowed) parse '' or leave the host out of the RobotsTxtStore."
            )
        text = _decode(body)
        groups: list[tuple[set, list, list]] = []  # (tokens, [is_global], rules)
        current = None
        seen_rule = False
        for raw in re.split(r"\r\n|\r|\n", text):
            kv = _key_value(_cut(raw))
            if kv is None:
                continue
            key, value = kv
            kind = _kind(key)
            if kind == "agent":
                if current is None or seen_rule:
                    current = (set(), [False], [])
                    groups.append(current)
                    seen_rule = False
                if value[:1] == "*" and (len(value) == 1 or value[1] in _WS):
                    current[1][0] = True
                else:
                    token = product_token(value)
                    if token:
                        current[0].add(token)
            elif kind is not None and current is not None:
                seen_rule = True
                current[2].append((kind == "allow", canonical_path(value)))
        return cls([(frozenset(t), g[0], r) for t, g, r in groups])

    def matcher(self, agent: str) -> RuleMatcher:
        """The compiled rules that apply to `agent`, a product token alone or with a version (`"GPTBot"`,
        `"CCBot/2.0"`; `"*"`: a crawler without a group of its own); another name is a `ValueError`
        (`check_user_agents`)."""
        token = _caller_token(agent)
        found = self._matchers.get(token)
        if found is None:
            chosen = tuple(i for i, g in enumerate(self.groups) if token and token in g[0])
            if not chosen:
                chosen = tuple(i for i, g in enumerate(self.groups) if g[1])
            found = self._by_groups.get(chosen)
            if found is None:
                rules = [r for i in chosen for r in self.groups[i][2]]
                found = RuleMatcher(rules) if rules else ALLOW_ALL
                self._by_groups[chosen] = found
            self._matchers[token] = found
        return found

    def allowed(self, url: str, agent: str) -> bool:
        """Whether `agent` (a product token, alone or with a version, or `"*"`) may fetch `url` (absolute,
        `//host/path`, `host/path` or a path)."""
        matcher = self.matcher(agent)
        if not isinstance(url, str):
            raise TypeError(f"url must be a str (a URL or a path), got {type(url).__name__}.")
        return matcher.allowed(url_path(url))
