"""robots.txt decisions for AI crawlers with Protego, cached per domain.

A URL is *compliant* when none of the checked user agents is disallowed from fetching it by the robots.txt of its
host. A host without a robots.txt (or with one that cannot be read) is compliant, as in the data-compliance paper:
opting out needs an explicit rule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from protego import Protego

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


def _strip_netloc(netloc: str) -> str:
    """Host part of a netloc: no userinfo, no port, no brackets, no trailing dot, lower case."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        return host[1:end].lower() if end != -1 else host[1:].lower()
    colon = host.find(":")
    if colon != -1:
        host = host[:colon]
    return host.rstrip(".").lower()


def normalize_host(host_or_url: str) -> str:
    """Normalise a host name (or the host of a URL) to the key used by the snapshot store.

    Lower case, without userinfo, port or trailing dot; internationalised names are converted to their ASCII
    (punycode) form, so `bücher.example` and `xn--bcher-kva.example` are the same key.

    Args:
        host_or_url (`str`): A host name, `host:port`, or a full URL (`scheme://host/...`).

    Returns:
        `str`: the normalised host, or `""` when there is none.
    """
    if not isinstance(host_or_url, str):
        raise TypeError(f"host_or_url must be a str, got {type(host_or_url).__name__}.")
    text = host_or_url.strip()
    scheme_end = text.find("://")
    if scheme_end != -1:
        text = text[scheme_end + 3 :]
    elif text.startswith("//"):
        text = text[2:]
    end = len(text)
    for sep in "/?#\\":
        pos = text.find(sep)
        if pos != -1 and pos < end:
            end = pos
    host = _strip_netloc(text[:end])
    if host and not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            # Labels that IDNA 2003 rejects (empty, too long): keep the Unicode spelling as the key.
            pass
    return host


def _rule_signature(parser: Protego, agent: str, memo: dict | None = None):
    """A hashable description of the rules Protego applies to `agent` and a matcher for them.

    Returns `(signature, matcher)`; `signature` is `None` when the rules never disallow. Agents with the same
    signature get the same decision for every URL, so the cache checks one matcher per signature. The matcher is
    Protego's matched rule set (`matcher.can_fetch(url)`), or, if a Protego release changes those internals, a
    call of the public `parser.can_fetch(url, agent)` (still exact, only slower). `memo` maps rule sets already
    described (by identity) to their result.
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
        result = rules, rule_set
    if memo is not None:
        memo[id(rule_set)] = result
    return result


class _PublicMatcher:
    def __init__(self, parser: Protego, agent: str):
        self.parser, self.agent = parser, agent

    def can_fetch(self, url: str) -> bool:
        return self.parser.can_fetch(url, self.agent)


def _is_robots_txt(url: str) -> bool:
    """Protego always allows the robots.txt file itself."""
    return urlparse(url).path == "/robots.txt"


# A group whose only rule is `Disallow: /` disallows every URL (but /robots.txt): no matching needed.
_DISALLOW_ALL = object()


@dataclass(frozen=True)
class DomainPolicy:
    """Cached decision data for one host.

    Args:
        host (`str`): Normalised host the policy was built for.
        robots_key (`str | None`): Store key whose robots.txt applies (`None`: no robots.txt, everything allowed).
        groups (`tuple`): One `(matcher, agents)` pair per distinct set of rules that can disallow; `matcher` has
            Protego's `can_fetch(url)` for those rules.
        parser (`Protego | None`): The parsed robots.txt.
    """

    host: str
    robots_key: str | None
    groups: tuple[tuple[object, tuple[str, ...]], ...]
    parser: Protego | None

    @property
    def allows_everything(self) -> bool:
        return not self.groups


_ALLOW_ALL = DomainPolicy(host="", robots_key=None, groups=(), parser=None)


class RobotsCompliance:
    """Decide whether URLs may be used for AI training under the robots.txt rules of their hosts.

    Decisions come from [Protego](https://github.com/scrapy/protego) (RFC 9309 matching: longest match wins,
    `Allow` wins ties, `*` and `$` wildcards, case-insensitive user agents, merged groups). For every host the
    robots.txt is parsed once and the checked agents are grouped by the rules that apply to them, so a URL costs
    one dictionary lookup on hosts that restrict no checked agent and one Protego match per distinct rule group
    otherwise.

    Args:
        robots (`RobotsTxtStore` or `Mapping[str, str | bytes | None]`):
            robots.txt texts per host (`None` = the host has no robots.txt).
        user_agents (`Sequence[str]`, *optional*, defaults to `DEFAULT_AI_USER_AGENTS`):
            Agents to check; a URL is non-compliant if *any* of them is disallowed. Include `"*"` to also remove
            content closed to all crawlers.
        host_fallback (`str`, *optional*, defaults to `"www"`):
            How a URL's host is looked up in the store: `"exact"` (the host only, as the reference filter),
            `"www"` (also `example.com` for `www.example.com` and the other way round) or `"parents"` (also every
            parent domain, `a.b.example.com` -> `b.example.com` -> `example.com`).
        missing_url (`str`, *optional*, defaults to `"keep"`):
            Decision for an empty or `None` URL: `"keep"` (compliant) or `"drop"` (non-compliant).
        max_cached_hosts (`int`, *optional*):
            Bound on the number of cached host policies (oldest evicted first); default: unbounded.
    """

    def __init__(
        self,
        robots,
        user_agents: Sequence[str] = DEFAULT_AI_USER_AGENTS,
        host_fallback: str = "www",
        missing_url: str = "keep",
        max_cached_hosts: int | None = None,
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
        if host_fallback not in HOST_FALLBACKS:
            raise ValueError(f"host_fallback must be one of {HOST_FALLBACKS}, got {host_fallback!r}.")
        if missing_url not in ("keep", "drop"):
            raise ValueError(f"missing_url must be 'keep' or 'drop', got {missing_url!r}.")
        if max_cached_hosts is not None and (not isinstance(max_cached_hosts, int) or max_cached_hosts < 1):
            raise ValueError(f"max_cached_hosts must be a positive int or None, got {max_cached_hosts!r}.")
        self.store = store
        self.user_agents = agents
        self.host_fallback = host_fallback
        self.missing_url = missing_url
        self.max_cached_hosts = max_cached_hosts
        self._policies: dict[str, DomainPolicy] = {}
        self._by_prefix: dict[str, DomainPolicy] = {}
        self._by_text: dict[str, tuple] = {}
        self.max_cached_texts = 65536
        self.parse_failures: dict[str, str] = {}

    # Worker processes (datasets num_proc, datatrove tasks) rebuild the cache lazily.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_policies"] = {}
        state["_by_prefix"] = {}
        state["_by_text"] = {}
        return state

    def clear_cache(self) -> None:
        """Drop every cached host policy (e.g. after changing the store)."""
        self._policies.clear()
        self._by_prefix.clear()
        self._by_text.clear()

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
        key = next((k for k in self._candidate_keys(host) if self.store.get_text(k) is not None), None)
        if key is None:
            return DomainPolicy(host=host, robots_key=None, groups=(), parser=None)
        text = self.store.get_text(key)
        # Many hosts serve byte-identical robots.txt files (CMS defaults): parse and group each text once.
        cached = self._by_text.get(text)
        if cached is None:
            cached = self._parse_and_group(key, text)
            if len(self._by_text) >= self.max_cached_texts:
                del self._by_text[next(iter(self._by_text))]
            self._by_text[text] = cached
        parser, groups = cached
        return DomainPolicy(host=host, robots_key=key, groups=groups, parser=parser)

    def _parse_and_group(self, key: str, text: str):
        try:
            parser = Protego.parse(text)
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
        policy = self._policies.get(host)
        if policy is None:
            policy = self._build_policy(host)
            if self.max_cached_hosts is not None and len(self._policies) >= self.max_cached_hosts:
                oldest = next(iter(self._policies))
                del self._policies[oldest]
                self._by_prefix = {n: p for n, p in self._by_prefix.items() if p.host != oldest}
            self._policies[host] = policy
        return policy

    def _policy_for_url(self, url: str) -> DomainPolicy:
        host = normalize_host(url)
        return self.policy(host) if host else _ALLOW_ALL

    def _policy_for_prefix(self, url: str, slash: int) -> DomainPolicy:
        """Look up (or build and cache) the policy of `url`; `slash` is the index where its path starts."""
        prefix = url if slash == -1 else url[:slash]
        policy = self._by_prefix.get(prefix)
        if policy is None:
            policy = self._policy_for_url(url)
            # Cache key: everything before the path ("https://host:port"); URLs without a path take this route.
            if slash != -1 and "?" not in prefix and "#" not in prefix:
                if self.max_cached_hosts is None or len(self._by_prefix) < 4 * self.max_cached_hosts:
                    self._by_prefix[prefix] = policy
        return policy

    def _match_groups(self, url: str, groups) -> tuple[str, ...]:
        if "/robots.txt" in url and _is_robots_txt(url):
            return ()
        out: tuple[str, ...] = ()
        hits = 0
        for matcher, agents in groups:
            if matcher is not _DISALLOW_ALL:
                try:
                    if matcher.can_fetch(url):
                        continue
                except Exception:  # a URL Protego cannot read is not opted out
                    continue
            out += agents
            hits += 1
        if hits > 1:  # report agents in the order they were given
            chosen = set(out)
            out = tuple(a for a in self.user_agents if a in chosen)
        return out

    def _disallowed(self, url: str) -> tuple[str, ...]:
        groups = self._policy_for_prefix(url, url.find("/", url.find("//") + 2)).groups
        return self._match_groups(url, groups) if groups else ()

    def disallowed_agents(self, url: str | None) -> tuple[str, ...]:
        """The checked user agents that may not fetch `url` (empty tuple: compliant).

        Args:
            url (`str` or `None`): Absolute URL (`scheme://host/path?query`).

        Returns:
            `tuple[str, ...]` in the order of `user_agents`; for a missing URL with `missing_url="drop"`,
            `("<missing-url>",)`.
        """
        if url is None or url == "":
            return () if self.missing_url == "keep" else ("<missing-url>",)
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}.")
        return self._disallowed(url)

    def is_compliant(self, url: str | None) -> bool:
        """`True` when no checked user agent is disallowed from fetching `url`."""
        return not self.disallowed_agents(url)

    def disallowed_agents_batch(self, urls: Iterable[str | None]) -> list[tuple[str, ...]]:
        """`disallowed_agents` over many URLs (list in, list out, same order)."""
        if isinstance(urls, str):
            raise TypeError("urls must be an iterable of URLs, not a single str; use disallowed_agents(url).")
        missing = () if self.missing_url == "keep" else ("<missing-url>",)
        # The loop below is `disallowed_agents` inlined: it runs once per document of a corpus.
        by_prefix_get = self._by_prefix.get
        slow_lookup = self._policy_for_prefix
        match_groups = self._match_groups
        disallow_all = _DISALLOW_ALL
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
            slash = url.find("/", url.find("//") + 2)
            policy = by_prefix_get(url if slash == -1 else url[:slash])
            if policy is None:
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
                    allowed = matcher.can_fetch(url)
                except Exception:  # a URL Protego cannot read is not opted out
                    allowed = True
                append(() if allowed else agents)
            else:
                append(match_groups(url, groups))
        return out

    def is_compliant_batch(self, urls: Iterable[str | None]) -> list[bool]:
        """`is_compliant` over many URLs (list in, list out, same order)."""
        return [not agents for agents in self.disallowed_agents_batch(urls)]


def protego_disallowed_agents(parser: Protego | None, url: str, user_agents: Sequence[str]) -> tuple[str, ...]:
    """Reference decision without any cache: ask Protego for every agent (used by tests and the benchmark)."""
    if parser is None:
        return ()
    out = []
    for agent in user_agents:
        try:
            if not parser.can_fetch(url, agent):
                out.append(agent)
        except Exception:
            pass
    return tuple(out)
