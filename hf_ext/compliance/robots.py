"""robots.txt decisions for AI crawlers with RFC 9309 semantics, cached per host.

A URL is *compliant* when none of the checked user agents is disallowed from fetching it by the robots.txt of its
host. What a host's fetch status means follows RFC 9309 section 2.3.1 by default: a robots.txt that is *unavailable*
(4xx, or recorded as absent) allows everything; one that is *unreachable* (5xx, network error) disallows everything.
`status_policy="paper"` keeps the data-compliance paper's pipeline behaviour (only a readable robots.txt can opt out).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from protego import Protego

from .rfc9309 import (
    DISALLOW_ALL,
    RobotsTxt,
    _encode_bytes,
    authority_end,
    authority_start,
    check_user_agents,
    path_from,
    product_token,
    remove_dot_segments,
    url_path,
)

logger = logging.getLogger(__name__)

#: AI user agents checked by default: the list used to build the compliant pretraining corpora (January 2025
#: snapshot), including the versioned CCBot variants and ``*`` (content closed to every crawler is also removed).
DEFAULT_AI_USER_AGENTS: tuple[str, ...] = (
    "AI2Bot",
    "Applebot-Extended",
    "Bytespider",
    "CCBot",
    "CCBot/2.0",
    "CCBot/1.0",
    "ClaudeBot",
    "cohere-training-data-crawler",
    "Diffbot",
    "FacebookBot",
    "Meta-ExternalAgent",
    "Google-Extended",
    "GPTBot",
    "PanguBot",
    "*",
)

HOST_FALLBACKS = ("exact", "www", "parents")
BACKENDS = ("rfc9309", "protego", "google")
STATUS_POLICIES = ("rfc9309", "paper")
STATUS_CLASSES = ("available", "unavailable", "unreachable", "missing")


def status_class(text: str | None, status: int | None, error: str | None = None) -> str:
    """RFC 9309 section 2.3.1 class of one host's fetch result.

    * `"available"`: a robots.txt body with a 2xx status (or no status recorded);
    * `"unavailable"`: 3xx left unresolved or 4xx -> the crawler may access everything;
    * `"unreachable"`: 5xx, any other status, or a network `error` -> complete disallow;
    * `"missing"`: recorded as having no robots.txt, with no status or error (e.g. `{host: None}`) -> allowed.
    """
    if error:
        return "unreachable"
    if status is None:
        return "missing" if text is None else "available"
    if status.__class__ is not int:
        from ..utils.checks import is_int

        if not is_int(status):  # a str "200" or a float would be misread (or fail in a comparison)
            # a 0-d tensor (a torch-formatted dataset row) is refused like in `record_from_response`: pass int(status)
            raise TypeError(
                f"status must be an int HTTP status or None, got {status!r} ({type(status).__name__}); pass e.g. "
                "int(status)."
            )
    if 200 <= status < 300:
        return "available" if text is not None else "missing"
    if 300 <= status < 500:
        return "unavailable"
    return "unreachable"


_OPAQUE_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_PORT_THEN_END = re.compile(r"\d*(?:[/?#\\]|$)")
# Schemes whose URIs never name a web host, whatever follows the colon (`tel:5551234` is not host `tel`, port 5551234)
_HOSTLESS_SCHEMES = frozenset(
    "about blob callto data fax file geo javascript magnet mailto news sip sips sms tel urn".split()
)


def _has_no_authority(text: str) -> bool:
    """`scheme:rest` with no `//`: a URI without a host (`mailto:`, `javascript:`, `data:`, `urn:`), unless `rest` is a
    port (`localhost:8080/x`) or the whole is a bare IPv6 literal (`fe80::1`, a store key)."""
    m = _OPAQUE_SCHEME.match(text)
    if m is None:
        return False
    if text[: m.end() - 1].lower() in _HOSTLESS_SCHEMES:
        return True
    if _PORT_THEN_END.match(text, m.end()) is not None:
        return False
    return not _is_ipv6(re.split(r"[/?#\\]", text, maxsplit=1)[0])


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# WHATWG URL parsing removes every ASCII tab and newline from the input, wherever they are (`a.c\tom` is `a.com`)
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")


def _without_tab_newline(url: str) -> str:
    """`url` without ASCII tabs and newlines (WHATWG URL: `https://a.c\tom/p` is `https://a.com/p`)."""
    return url.translate(_TAB_NEWLINE) if "\t" in url or "\n" in url or "\r" in url else url


def _strip_netloc(netloc: str) -> str:
    """Host part of a netloc: no userinfo, no port, no brackets, no trailing dot, ASCII letters in lower case.

    Only ASCII is lower-cased here: the UTS 46 mapping of a non-ASCII host (`_host_to_ascii`) maps the case of every
    letter itself, and Python's `str.lower` would apply the final-sigma rule (`"ΑΣ-Χ".lower()` is `"ας-χ"`, another
    domain than the `ασ-χ` browsers read)."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        return host[1:end].lower() if end != -1 else host[1:].lower()
    colon = host.find(":")
    if colon != -1:
        if host.count(":") > 1 and _is_ipv6(host):  # a bare IPv6 literal (a store key): no port to strip
            return host.lower()
        host = host[:colon]
    return host.rstrip(".").translate(_ASCII_LOWER)


def _is_ipv6(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def absolute_url(url: str) -> str:
    """`url` with a scheme: `//host/path` and scheme-less `host/path` get `http:` / `http://` in front, a web scheme
    written without its slashes (`http:a.com/p`) gets them, and a backslash ending the host becomes `/`."""
    start = authority_start(url)
    if start == 0:
        url, start = "http://" + url, 7
    elif start == 2 and url.startswith("//"):
        url, start = "http:" + url, 7
    else:
        fixed = _with_slashes(url, start)
        start += len(fixed) - len(url)
        url = fixed
    return _slash_ending_host(url, start)


def protego_url(url: str) -> str:
    """`url` as handed to Protego: absolute (see `absolute_url`) and with the dot segments of its path removed, as an
    HTTP client requests it (`/pub/../private/a`, `/pub/%2e%2e/private/a` -> `/private/a`; RFC 3986 section 5.2.4),
    so the protego backend decides the path the rfc9309 and google backends decide."""
    url = absolute_url(url)
    if "/." not in url and "%2e" not in url and "%2E" not in url:
        return url
    end = authority_end(url, authority_start(url))
    if end == -1:
        return url
    stop = len(url)
    for sep in "?#":
        pos = url.find(sep, end)
        if pos != -1 and pos < stop:
            stop = pos
    path = url[end:stop]
    if "/." not in path and "%2e" not in path.lower():
        return url
    return url[:end] + remove_dot_segments(path) + url[stop:]


def _slash_ending_host(url: str, start: int) -> str:
    """`url` (host at `start`) with a backslash that ends the host written as `/` (`https://a.com\\p` as
    `https://a.com/p`): urllib, and so Protego, would otherwise read `a.com\\p` as the host and `/` as the path."""
    end = authority_end(url, start)
    return url if end == -1 or url[end] == "/" else url[:end] + "/" + url[end + 1 :]


def _with_slashes(url: str, start: int) -> str:
    """`http:a.com/p`, `https:/a.com/p`, `https:\\\\a.com/p` (host at `start`) as `scheme://a.com/p`; others unchanged."""
    if url[start - 3 : start] == "://":
        return url
    return url[: url.index(":")] + "://" + url[start:]


def normalize_host(host_or_url: str) -> str:
    """Normalise a host name (or the host of a URL) to the key used by the snapshot store.

    Lower case, without userinfo, port or trailing dot; percent-escapes decoded; internationalised names converted
    to their ASCII (punycode) form as browsers do (WHATWG URL, UTS 46 non-transitional: `faß.de` is
    `xn--fa-hia.de`), so `bücher.example` and `xn--bcher-kva.example` are the same key; IPv6 literals in their
    shortest form (`2001:0db8:0:0::1` is `2001:db8::1`); IPv4 addresses in dotted decimal, whatever their spelling
    (`0x7f.1`, `0177.0.0.1` and `2130706433` are `127.0.0.1`, as browsers read them).

    Args:
        host_or_url (`str`): A host name, `host:port`, or a full URL (`scheme://host/...`).

    Returns:
        `str`: the normalised host, or `""` when there is none.
    """
    if not isinstance(host_or_url, str):
        raise TypeError(f"host_or_url must be a str, got {type(host_or_url).__name__}.")
    text = _without_tab_newline(host_or_url).strip()
    start = authority_start(text)
    if start == 0 and _has_no_authority(text):
        return ""
    text = text[start:]
    end = len(text)
    for sep in "/?#\\":
        pos = text.find(sep)
        if pos != -1 and pos < end:
            end = pos
    host = _strip_netloc(text[:end])
    if "%" in host and not _is_ipv6(host.partition("%")[0]):  # WHATWG: a host is percent-decoded first
        host = _percent_decode_host(host)
    if host and not host.isascii():
        host = _host_to_ascii(host)
    if ":" in host and _is_ipv6(host):  # one spelling per address: 2001:0db8:0:0::1 -> 2001:db8::1
        import ipaddress

        host = ipaddress.IPv6Address(host).compressed
    elif _ends_in_a_number(host):  # 0x7f.1, 2130706433 and 0177.0.0.1 are all 127.0.0.1 to a browser
        host = _ipv4_dotted(host) or host
    return host


def _ipv4_number(part: str) -> int | None:
    """One part of a WHATWG IPv4 host: decimal, `0x` hex or leading-zero octal; `None` when it is not a number."""
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    digits = "0123456789abcdef"[:radix]
    if not all(c in digits for c in part.lower()):
        return None
    return int(part, radix)


def _ends_in_a_number(host: str) -> bool:
    """WHATWG URL's "ends in a number" check: such a host is an IPv4 address (or no valid host at all)."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return bool(last) and _ipv4_number(last) is not None


def _ipv4_dotted(host: str) -> str | None:
    """WHATWG URL's IPv4 parser: the dotted-decimal form of `host`, or `None` when a browser refuses it (kept as
    written then, like other hosts a browser would refuse)."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4 or any(not p for p in parts):
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers) or any(n > 255 for n in numbers[:-1]):
        return None
    if numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    address = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        address += n * 256 ** (3 - i)
    return ".".join(str((address >> shift) & 255) for shift in (24, 16, 8, 0))


def _percent_decode_host(host: str) -> str:
    """`ex%61mple.com` -> `example.com` (WHATWG URL host parsing decodes escapes, UTF-8); kept as written when the
    escapes are not UTF-8."""
    from urllib.parse import unquote

    try:
        decoded = unquote(host, errors="strict")
    except UnicodeDecodeError:
        return host
    if any(c in _FORBIDDEN_HOST_CHARS or c <= " " for c in decoded):
        return host  # `a%2Fb.com`: browsers refuse the host; keep it as written (never a key with a '/')
    return decoded.rstrip(".").translate(_ASCII_LOWER)  # non-ASCII letters: the UTS 46 mapping


# WHATWG URL "forbidden host code points" (besides controls and space), and '%' (no double decoding)
_FORBIDDEN_HOST_CHARS = frozenset("#%/:<>?@[\\]^|\x7f")


def _host_to_ascii(host: str) -> str:
    """Domain to ASCII as browsers do it (WHATWG URL: UTS 46 non-transitional processing, no STD3 rules): mapped
    (case folding, full-width dots such as U+3002 to `.`, compatibility forms), then each non-ASCII label punycoded,
    so `faß.de` is `xn--fa-hia.de` (not IDNA 2003's `fass.de`, another registered domain). Needs the `idna` package;
    without it a non-ASCII host is refused rather than converted by the stdlib's IDNA 2003 codec."""
    try:
        import idna
    except ImportError as err:  # pragma: no cover - idna comes with requests, a dependency of datasets
        raise ValueError(
            f"host {host!r} is internationalised: converting it as browsers do (UTS 46) needs the idna package "
            "(pip install idna)."
        ) from err
    try:
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError):
        return host.lower()  # a code point UTS 46 disallows: no browser fetches such a host; keep the Unicode spelling
    labels = []
    for label in mapped.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append("xn--" + label.encode("punycode").decode("ascii"))
        except UnicodeError:
            return mapped
    return ".".join(labels).rstrip(".")


def _rule_signature(parser: Protego, agent: str, memo: dict | None = None):
    """A hashable description of the rules Protego applies to `agent` and a matcher for them.

    Returns `(signature, matcher)`; `signature` is `None` when the rules never disallow. Agents with the same
    signature get the same decision for every URL, so the cache checks one matcher per signature. The matcher wraps
    Protego's matched rule set, or, if a Protego release changes those internals, the public
    `parser.can_fetch(url, agent)` (still exact, only slower). `memo` maps rule sets already described (by identity)
    to their result.
    """
    try:
        rule_set = parser._get_matching_rule_set(agent)
        if rule_set is None:
            return None, None
        if memo is not None and id(rule_set) in memo:
            return memo[id(rule_set)]
        rules = tuple((rule.field, rule.value._pattern) for rule in rule_set._rules)
        rule_set.can_fetch  # noqa: B018  (present in every supported release)
    except AttributeError:
        return ("agent", agent), _PublicMatcher(parser, agent)
    if not any(field == "disallow" for field, _ in rules):
        result = None, None
    elif rules == (("disallow", "/"),):
        result = rules, _DISALLOW_ALL
    else:
        result = rules, _ProtegoMatcher(rule_set)
    if memo is not None:
        memo[id(rule_set)] = result
    return result


class _PublicMatcher:
    def __init__(self, parser: Protego, agent: str):
        self.parser, self.agent = parser, agent

    def allowed(self, url: str) -> bool:
        return self.parser.can_fetch(protego_url(url), self.agent)


def _is_robots_txt(url: str) -> bool:
    """RFC 9309 section 2.2.2: the robots.txt file itself is always allowed."""
    return url_path(url) == "/robots.txt" if "/robots.txt" in url else False


# A byte that was not UTF-8 in a robots.txt, as the store keeps it (errors="surrogateescape")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

# A group whose rules disallow every URL (but /robots.txt): no matching needed.
_DISALLOW_ALL = DISALLOW_ALL


class _ProtegoMatcher:
    """Protego's matched rule set behind the `allowed(url)` interface."""

    __slots__ = ("allowed",)

    def __init__(self, rule_set):
        can_fetch = rule_set.can_fetch
        # Protego reads the path with urlparse: a scheme-less URL must be made absolute first (and its dot segments
        # removed, as the other backends do).
        self.allowed = lambda url: can_fetch(protego_url(url))


class _GoogleMatcher:
    """Google's parser (`fast-robotstxt`): it parses the file on every call, so it is exact but slow.

    The package's `is_allowed` takes a str and encodes it as UTF-8, which cannot write a byte that is not UTF-8; such a
    byte (kept by the store as its surrogate escape) is handed over as its `%XX` escape, which is how the parser itself
    writes a non-ASCII byte of a rule before matching (`Disallow: /caf\\xe9/` and `Disallow: /caf%E9/` decide alike).
    The parser cuts a line at 16,664 characters before escaping it, so a line with more than about 5,500 such bytes is
    cut earlier here than on the raw bytes (the `rfc9309` backend decides it as the parser does on the raw bytes)."""

    __slots__ = ("text", "agent", "matcher")

    def __init__(self, text: str, agent: str):
        from robotstxt import RobotsMatcher

        if not text.isascii():
            # the bytes the parser would read (a byte order mark in front where they would start like one), then each
            # byte that is not UTF-8 as its escape
            text = _ESCAPED_BYTE.sub(_byte_escape, _encode_bytes(text).decode("utf-8", "surrogateescape"))
        self.text, self.agent, self.matcher = text, agent, RobotsMatcher()

    def allowed(self, url: str) -> bool:
        if _is_robots_txt(url):
            return True
        return self.matcher.is_allowed(self.text, self.agent, google_url(url))


def _byte_escape(match: re.Match) -> str:
    return f"%{ord(match.group()) - 0xDC00:02X}"


def google_url(url: str) -> str:
    """`url` in the form Google's parser expects: absolute, with a percent-encoded path (the caller's duty there)."""
    start = authority_start(url)
    if start == 0:
        url, start = "//" + url, 2
    elif start > 2:
        fixed = _with_slashes(url, start)
        start += len(fixed) - len(url)
        url = fixed
    host_end = authority_end(url, start)
    return url if host_end == -1 else url[:host_end] + url_path(url)


@dataclass(frozen=True)
class DomainPolicy:
    """Cached decision data for one host.

    Args:
        host (`str`): Normalised host the policy was built for.
        robots_key (`str | None`): Store key whose record applies (`None`: no record, everything allowed).
        groups (`tuple`): One `(matcher, agents)` pair per distinct set of rules that can disallow; `matcher.allowed`
            takes a canonical path (`rfc9309` backend) or the URL (`protego`, `google`).
        parser (`RobotsTxt | Protego | None`): The parsed robots.txt.
        status_class (`str`): `"available"`, `"unavailable"`, `"unreachable"` or `"missing"` (see `status_class`).
    """

    host: str
    robots_key: str | None
    groups: tuple[tuple[object, tuple[str, ...]], ...]
    parser: object | None
    status_class: str = "missing"

    @property
    def allows_everything(self) -> bool:
        return not self.groups


_ALLOW_ALL = DomainPolicy(host="", robots_key=None, groups=(), parser=None)


def _rfc_groups(parser: RobotsTxt, agents: Sequence[str]) -> tuple:
    """Agents grouped by the compiled rules that apply to them; groups that cannot disallow are dropped."""
    by_signature: dict = {}
    for agent in agents:
        matcher = parser.matcher(agent)
        if matcher.can_disallow:
            by_signature.setdefault(matcher.signature, (matcher, []))[1].append(agent)
    return tuple((DISALLOW_ALL if m.disallows_everything else m, tuple(a)) for m, a in by_signature.values())


class RobotsCompliance:
    """Decide whether URLs may be used for AI training under the robots.txt rules of their hosts.

    The default engine (`backend="rfc9309"`, `hf_ext.compliance.rfc9309`) implements RFC 9309 with the reference
    parser's choices where the RFC leaves room: groups match the crawler's *product token* (case-insensitive, the name
    up to the first character that is not a letter, `-` or `_`; `Applebot` does not cover `Applebot-Extended`), the
    longest matching rule wins, `Allow` wins ties, `*` and `$` wildcards, raw and percent-encoded paths compare equal,
    `/robots.txt` itself is always allowed. For every host the robots.txt is parsed once and the checked agents are
    grouped by the rules that apply to them, so a URL costs one dictionary lookup on hosts that restrict no checked
    agent and one compiled match per distinct rule group otherwise. See docs/compliance.md for the conformance table.

    The cached host policies follow the store: after a change of it (`store.add`, `store.update_from_fetch`, e.g. a
    refreshed snapshot) the next decision drops them and decides by the store as it is now, as a checker unpickled in
    a `num_proc` worker or a datatrove task (whose caches start empty) does.

    Args:
        robots (`RobotsTxtStore` or `Mapping[str, str | bytes | None | RobotsRecord]`):
            robots.txt texts per host (`None` = the host has no robots.txt).
        user_agents (`Sequence[str]`, *optional*, defaults to `DEFAULT_AI_USER_AGENTS`):
            Agents to check; a URL is non-compliant if *any* of them is disallowed. Include `"*"` to also remove
            content closed to all crawlers. Each is a product token, alone or with a version (`"GPTBot"`,
            `"CCBot/2.0"`): a full User-Agent header or a name with a space (`"GPT Bot"`) is a `ValueError`, as it
            would be matched by another token (`mozilla`, `gpt`) and another crawler's group would decide.
        host_fallback (`str`, *optional*, defaults to `"www"`):
            How a URL's host is looked up in the store: `"exact"` (the host only, as the reference filter),
            `"www"` (also `example.com` for `www.example.com` and the other way round) or `"parents"` (also every
            parent domain, `a.b.example.com` -> `b.example.com` -> `example.com`). The first candidate with a record
            wins, even a record saying the host has no robots.txt.
        missing_url (`str`, *optional*, defaults to `"keep"`):
            Decision for an empty or `None` URL: `"keep"` (compliant) or `"drop"` (non-compliant).
        max_cached_hosts (`int`, *optional*):
            Bound on the number of cached host policies (least recently used evicted first, O(1) per lookup);
            default: unbounded.
        backend (`str`, *optional*, defaults to `"rfc9309"`):
            `"rfc9309"` (hf_ext's parser, the fastest and closest to RFC 9309), `"protego"` (Protego, as the
            data-compliance paper's pipeline; note its prefix agent matching) or `"google"` (Google's C++ parser
            from the `fast-robotstxt` package, given the file's bytes; exact reference behaviour, but it re-parses the
            file on every call).
        status_policy (`str`, *optional*, defaults to `"rfc9309"`):
            `"rfc9309"`: unreachable hosts (5xx, network errors) disallow everything, unavailable ones (4xx)
            allow everything. `"paper"`: every host without a readable robots.txt allows everything.
    """

    def __init__(
        self,
        robots,
        user_agents: Sequence[str] = DEFAULT_AI_USER_AGENTS,
        host_fallback: str = "www",
        missing_url: str = "keep",
        max_cached_hosts: int | None = None,
        backend: str = "rfc9309",
        status_policy: str = "rfc9309",
    ):
        from .store import RobotsTxtStore

        if isinstance(robots, RobotsTxtStore):
            store = robots
        elif isinstance(robots, Mapping):
            store = RobotsTxtStore.from_dict(robots)
        else:
            raise TypeError(
                f"robots must be a RobotsTxtStore or a mapping host -> robots.txt text, got {type(robots).__name__}; "
                "load a snapshot with RobotsTxtStore.load(path)."
            )
        if isinstance(user_agents, str) or not isinstance(user_agents, Iterable):
            raise TypeError("user_agents must be a sequence of agent names, e.g. ['GPTBot', 'CCBot', '*'].")
        agents = tuple(dict.fromkeys(user_agents))
        if not agents or not all(isinstance(a, str) and a.strip() for a in agents):
            raise ValueError(f"user_agents must hold at least one non-empty agent name, got {list(user_agents)!r}.")
        check_user_agents(agents, "user_agents")  # a full User-Agent header or 'GPT Bot' would select another group
        if host_fallback not in HOST_FALLBACKS:
            raise ValueError(f"host_fallback must be one of {HOST_FALLBACKS}, got {host_fallback!r}.")
        if missing_url not in ("keep", "drop"):
            raise ValueError(f"missing_url must be 'keep' or 'drop', got {missing_url!r}.")
        if max_cached_hosts is not None and (
            not isinstance(max_cached_hosts, int) or isinstance(max_cached_hosts, bool) or max_cached_hosts < 1
        ):
            raise ValueError(f"max_cached_hosts must be a positive int or None, got {max_cached_hosts!r}.")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        if backend == "google":
            try:
                import robotstxt  # noqa: F401
            except ImportError as err:
                raise ValueError(
                    "backend='google' needs Google's parser: pip install 'hf_ext[robotstxt]' (fast-robotstxt)."
                ) from err
        if status_policy not in STATUS_POLICIES:
            raise ValueError(
                f"status_policy must be one of {STATUS_POLICIES} ('rfc9309': 5xx/unreachable disallows everything; "
                f"'paper': only a readable robots.txt opts out), got {status_policy!r}."
            )
        self.store = store
        self.user_agents = agents
        self.host_fallback = host_fallback
        self.missing_url = missing_url
        self.max_cached_hosts = max_cached_hosts
        self.backend = backend
        self.status_policy = status_policy
        self._uses_path = backend == "rfc9309"
        self.max_cached_texts = 65536
        self.parse_failures: dict[str, str] = {}
        self.clear_cache()

    # Worker processes (datasets num_proc, datatrove tasks) rebuild the cache lazily.
    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_policies", "_by_text"):
            state[name] = OrderedDict()
        state["_by_prefix"], state["_prefixes_of"] = {}, {}
        state["_cache_version"] = None  # the empty caches follow whatever store version the copy holds
        return state

    def clear_cache(self) -> None:
        """Drop every cached host policy and parsed text. A change of the store through `add` or `update_from_fetch`
        does this on the next decision (the store's version changed), so it is needed only after changing records
        some other way."""
        self._cache_version = self.store._version
        self._policies: OrderedDict[str, DomainPolicy] = OrderedDict()
        self._by_prefix: dict[str, DomainPolicy] = {}
        self._prefixes_of: dict[str, list[str]] = {}
        self._by_text: OrderedDict[str, tuple] = OrderedDict()

    @property
    def num_cached_hosts(self) -> int:
        return len(self._policies)

    def _candidate_keys(self, host: str) -> list[str]:
        keys = [host]
        if self.host_fallback == "www":
            keys.append(host[4:] if host.startswith("www.") else f"www.{host}")
        elif self.host_fallback == "parents":
            parts = host.split(".")
            keys.extend(".".join(parts[i:]) for i in range(1, len(parts) - 1))
        return keys

    def _build_policy(self, host: str) -> DomainPolicy:
        records = self.store._records
        key = next((k for k in self._candidate_keys(host) if k in records), None)
        if key is None:
            return DomainPolicy(host=host, robots_key=None, groups=(), parser=None, status_class="missing")
        record = records[key]
        cls = status_class(record.text, record.status, record.error)
        if cls != "available":
            if cls == "unreachable" and self.status_policy == "rfc9309":
                groups = ((DISALLOW_ALL, self.user_agents),)
            else:
                groups = ()
            return DomainPolicy(host=host, robots_key=key, groups=groups, parser=None, status_class=cls)
        text = record.text
        # Many hosts serve byte-identical robots.txt files (CMS defaults): parse and group each text once.
        cached = self._by_text.get(text)
        if cached is None:
            cached = self._parse_and_group(key, text)
            if len(self._by_text) >= self.max_cached_texts:
                self._by_text.popitem(last=False)
            self._by_text[text] = cached
        parser, groups = cached
        return DomainPolicy(host=host, robots_key=key, groups=groups, parser=parser, status_class=cls)

    def _parse_and_group(self, key: str, text: str):
        try:
            if self.backend == "rfc9309":
                parser = RobotsTxt.parse(text)
                return parser, _rfc_groups(parser, self.user_agents)
            if self.backend == "google":
                by_token: dict = {}
                for agent in self.user_agents:
                    token = "*" if agent == "*" else product_token(agent)
                    by_token.setdefault(token, []).append(agent)
                return text, tuple((_GoogleMatcher(text, t), tuple(a)) for t, a in by_token.items())
            # Protego cannot read a surrogate escape (a byte that is not UTF-8): it gets U+FFFD for it, as before
            # 2026-12-04 (when every backend did)
            parser = Protego.parse(_ESCAPED_BYTE.sub("\ufffd", text) if not text.isascii() else text)
        except Exception as err:  # a robots.txt that cannot be parsed opts nothing out
            self.parse_failures[key] = f"{type(err).__name__}: {err}"
            logger.warning("robots.txt of %s could not be parsed (%s); treating it as allowing everything.", key, err)
            return None, ()
        by_signature: dict = {}
        memo: dict = {}
        for agent in self.user_agents:
            try:
                signature, matcher = _rule_signature(parser, agent, memo)
            except Exception:
                signature, matcher = ("agent", agent), _PublicMatcher(parser, agent)
            if signature is not None:
                by_signature.setdefault(signature, (matcher, []))[1].append(agent)
        groups = tuple((matcher, tuple(agents)) for matcher, agents in by_signature.values())
        return (parser if groups else None), groups

    def policy(self, host: str) -> DomainPolicy:
        """The cached `DomainPolicy` of a (normalised) host, built on first use."""
        if self._cache_version != self.store._version:
            self.clear_cache()
        policies = self._policies
        policy = policies.get(host)
        if policy is None:
            policy = self._build_policy(host)
            if self.max_cached_hosts is not None and len(policies) >= self.max_cached_hosts:
                # O(1) LRU eviction: the least recently used host and the few URL prefixes that point to it.
                _, evicted = policies.popitem(last=False)
                for prefix in self._prefixes_of.pop(evicted.host, ()):
                    self._by_prefix.pop(prefix, None)
            policies[host] = policy
        elif self.max_cached_hosts is not None:
            policies.move_to_end(host)
        return policy

    def _policy_for_url(self, url: str) -> DomainPolicy:
        host = normalize_host(url)
        return self.policy(host) if host else _ALLOW_ALL

    def _policy_for_prefix(self, url: str, slash: int) -> DomainPolicy:
        """Look up (or build and cache) the policy of `url`; `slash` is the index where its path starts."""
        prefix = url if slash == -1 else url[:slash]
        policy = self._by_prefix.get(prefix)
        if policy is not None:
            if self.max_cached_hosts is not None:
                self._policies.move_to_end(policy.host)
            return policy
        policy = self._policy_for_url(url)
        # Cache key: everything before the path ("https://host:port"); URLs without a path take this route.
        if slash != -1 and "?" not in prefix and "#" not in prefix and ";" not in prefix and policy.host:
            if self.max_cached_hosts is None:
                self._by_prefix[prefix] = policy
            else:
                prefixes = self._prefixes_of.setdefault(policy.host, [])
                if len(prefixes) < 8:  # schemes, ports, spellings of one host
                    prefixes.append(prefix)
                    self._by_prefix[prefix] = policy
        return policy

    def policy_for_url(self, url: str) -> DomainPolicy:
        """The cached `DomainPolicy` that decides `url` (its `status_class` says why a host allows or disallows)."""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}.")
        url = _without_tab_newline(url).strip()
        if self._cache_version != self.store._version:
            self.clear_cache()
        return self._policy_for_prefix(url, self._path_start(url)) if url else _ALLOW_ALL

    def _match_groups(self, url: str, groups, path: str | None = None) -> tuple[str, ...]:
        if "/robots.txt" in url and _is_robots_txt(url):
            return ()
        if self._uses_path and path is None:
            path = url_path(url)
        arg = path if self._uses_path else url
        out: tuple[str, ...] = ()
        hits = 0
        for matcher, agents in groups:
            if matcher is not DISALLOW_ALL:
                try:
                    if matcher.allowed(arg):
                        continue
                except Exception:  # a URL the engine cannot read is not opted out
                    continue
            out += agents
            hits += 1
        if hits > 1:  # report agents in the order they were given
            chosen = set(out)
            out = tuple(a for a in self.user_agents if a in chosen)
        return out

    @staticmethod
    def _path_start(url: str) -> int:
        return authority_end(url, authority_start(url))

    def _disallowed(self, url: str) -> tuple[str, ...]:
        groups = self._policy_for_prefix(url, self._path_start(url)).groups
        return self._match_groups(url, groups) if groups else ()

    def disallowed_agents(self, url: str | None) -> tuple[str, ...]:
        """The checked user agents that may not fetch `url` (empty tuple: compliant).

        Args:
            url (`str` or `None`): Absolute URL (`scheme://host/path?query`); `//host/path` and scheme-less
                `host/path` are read the same way.

        Returns:
            `tuple[str, ...]` in the order of `user_agents`; for a missing URL with `missing_url="drop"`,
            `("<missing-url>",)`.
        """
        if url is None or url == "":
            return () if self.missing_url == "keep" else ("<missing-url>",)
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}.")
        # surrounding whitespace would sit in the cached URL prefix; tabs and newlines are not part of a URL (WHATWG)
        if url[0] <= " " or url[-1] <= " " or "\t" in url or "\n" in url or "\r" in url:
            url = _without_tab_newline(url).strip()
            if not url:
                return () if self.missing_url == "keep" else ("<missing-url>",)
        if self._cache_version != self.store._version:  # the store changed: its old policies are stale
            self.clear_cache()
        return self._disallowed(url)

    def is_compliant(self, url: str | None) -> bool:
        """`True` when no checked user agent is disallowed from fetching `url`."""
        return not self.disallowed_agents(url)

    def disallowed_agents_batch(self, urls: Iterable[str | None]) -> list[tuple[str, ...]]:
        """`disallowed_agents` over many URLs (list in, list out, same order)."""
        if isinstance(urls, str):
            raise TypeError("urls must be an iterable of URLs, not a single str; use disallowed_agents(url).")
        missing = () if self.missing_url == "keep" else ("<missing-url>",)
        if self._cache_version != self.store._version:  # the store changed: its old policies are stale
            self.clear_cache()
        # The loop below is `disallowed_agents` inlined: it runs once per document of a corpus.
        by_prefix_get = None if self.max_cached_hosts is not None else self._by_prefix.get
        slow_lookup = self._policy_for_prefix
        match_groups = self._match_groups
        disallow_all = DISALLOW_ALL
        uses_path = self._uses_path
        out: list[tuple[str, ...]] = []
        append = out.append
        for url in urls:
            if url.__class__ is not str:
                if url is None:
                    append(missing)
                    continue
                if not isinstance(url, str):
                    raise TypeError(f"urls must hold str or None, got {type(url).__name__}.")
            if not url:
                append(missing)
                continue
            # surrounding whitespace would sit in the cached URL prefix; tabs and newlines are not part of a URL
            if url[0] <= " " or url[-1] <= " " or "\t" in url or "\n" in url or "\r" in url:
                url = _without_tab_newline(url).strip()
                if not url:
                    append(missing)
                    continue
            slash = authority_end(url, authority_start(url))
            # Only a URL with a path may take a cached prefix: `https://a.com` matches the prefix that
            # `https://a.com/x` cached, but has no path to start at `slash`.
            policy = by_prefix_get(url[:slash]) if by_prefix_get is not None and slash != -1 else None
            cached = policy is not None  # cached prefixes hold no '?', '#' or ';': the path starts at `slash`
            if not cached:
                policy = slow_lookup(url, slash)
            groups = policy.groups
            if not groups:
                append(())
            elif len(groups) == 1 and "/robots.txt" not in url:
                matcher, agents = groups[0]
                if matcher is disallow_all:
                    append(agents)
                    continue
                try:
                    if uses_path:
                        allowed = matcher.allowed(path_from(url, slash) if cached else url_path(url))
                    else:
                        allowed = matcher.allowed(url)
                except Exception:  # a URL the engine cannot read is not opted out
                    allowed = True
                append(() if allowed else agents)
            else:
                append(match_groups(url, groups))
        return out

    def is_compliant_batch(self, urls: Iterable[str | None]) -> list[bool]:
        """`is_compliant` over many URLs (list in, list out, same order)."""
        return [not agents for agents in self.disallowed_agents_batch(urls)]

    def status_counts(self) -> dict[str, int]:
        """Hosts of the store per RFC 9309 status class (`available`, `unavailable`, `unreachable`, `missing`)."""
        return self.store.status_counts()


def protego_disallowed_agents(parser: Protego | None, url: str, user_agents: Sequence[str]) -> tuple[str, ...]:
    """Reference decision without any cache: ask Protego for every agent (used by tests and the benchmark)."""
    if parser is None:
        return ()
    url = protego_url(url)  # Protego reads the path with urlparse: a scheme-less URL would lose its host
    out = []
    for agent in user_agents:
        try:
            if not parser.can_fetch(url, agent):
                out.append(agent)
        except Exception:
            pass
    return tuple(out)
