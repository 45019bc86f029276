"""Coarse (domain-level) robots.txt compliance: a list of blocked domains, and every document of a listed domain (or of
one of its subdomains) dropped, as the data-compliance paper's coarse filter does. The fine (URL-level) decision of
`RobotsCompliance` handles partial opt-outs; see docs/compliance.md for what each mode drops."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .robots import (
    _FORBIDDEN_HOST_CHARS,
    RobotsCompliance,
    _ends_in_a_number,
    _is_ipv6,
    _without_tab_newline,
    normalize_host,
)


def _is_ip(host: str) -> bool:
    return _is_ipv6(host) or _ends_in_a_number(host)


class BlockedDomains(frozenset):
    """A set of blocked domains, each normalised as the snapshot store normalises hosts (`normalize_host`: lower case,
    no port, userinfo or trailing dot, IDNA names in their punycode form), so `"WWW.Bücher.DE."` and
    `"www.xn--bcher-kva.de"` are one entry. `is_blocked_domain` reads it as it is; any other collection is normalised
    on every call.

    Args:
        domains (`Iterable[str]`): Domain names (or URLs, whose host is taken). `.x.com` and `*.x.com` are read as
            `x.com` (whose subdomains are matched anyway). A single `str`, a non-`str` entry, an entry without a host
            or one that is no domain name (a space, a `*` elsewhere, an empty label: `x y.com`, `x.*.com`, `x..com`)
            is a `ValueError`/`TypeError` naming it.
    """

    def __new__(cls, domains: Iterable[str] = ()):
        if isinstance(domains, BlockedDomains):
            return domains
        if isinstance(domains, str | bytes) or not isinstance(domains, Iterable):
            raise TypeError(
                f"domains must be a collection of domain names, e.g. ['x.com', 'news.example.org'], got "
                f"{type(domains).__name__} {domains!r:.80}."
            )
        normalised = []
        for i, domain in enumerate(domains):
            if not isinstance(domain, str):
                raise TypeError(f"domains[{i}] must be a domain name (str), got {type(domain).__name__} {domain!r}.")
            text = domain.strip()
            # `.x.com` / `*.x.com` (no_proxy, cookie and wildcard list syntax): x.com and its subdomains, which is what
            # subdomain matching does for `x.com`
            text = text[2:] if text.startswith("*.") else text[1:] if text.startswith(".") else text
            host = normalize_host(text)
            if not host:
                raise ValueError(f"domains[{i}]={domain!r} names no host; pass domain names such as 'x.com'.")
            if not _is_ip(host):
                bad = next((c for c in host if c <= " " or c == "*" or c in _FORBIDDEN_HOST_CHARS), None)
                if bad is not None or "" in host.split("."):
                    why = f"the character {bad!r}" if bad is not None else "an empty label"
                    raise ValueError(
                        f"domains[{i}]={domain!r} is not a domain name (it holds {why}), so it would match no host; "
                        "pass domain names such as 'x.com' (a leading '.' or '*.' is read as the domain, whose "
                        "subdomains are matched anyway)."
                    )
            normalised.append(host)
        return super().__new__(cls, normalised)

    def __reduce__(self):  # pickled for datasets workers / datatrove tasks: entries are normalised already
        return (_blocked_domains_from_normalised, (list(self),))


def _blocked_domains_from_normalised(hosts: list[str]) -> BlockedDomains:
    return frozenset.__new__(BlockedDomains, hosts)


# Without tldextract: the public suffixes `<label>.<country code>` that are common under many country codes
# (`co.uk`, `gov.uk`, `com.au`, `gov.br`, `gob.mx`, `ac.jp`, ...; taken from the public suffix list's ICANN section),
# and the country codes whose every second-level name is a public suffix (`*.ck`, `*.np`, ...). It errs on the side
# of "a suffix": a domain it takes for one is only not listed by `build_blocked_domains`, while a public suffix
# listed would drop every site under it.
_GENERIC_SECOND_LEVEL = frozenset(
    "ac ad asso biz co com coop ed edu firm gob gouv gov govt go gv info int k12 ltd me med mil mod name ne net nhs nic "
    "nom or org plc police pro sch tm web".split()
)
_WILDCARD_COUNTRY_CODES = frozenset("bd ck er fk jm kh mm np pg".split())
_PSL = None  # tldextract's extractor over its bundled public suffix list (False: tldextract is not installed)


def _psl_extractor():
    global _PSL
    if _PSL is None:
        try:
            import tldextract
        except ImportError:
            _PSL = False
        else:  # the snapshot bundled with tldextract: no download, no cache folder
            _PSL = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    return _PSL


def _is_public_suffix(host: str, derived: bool = True) -> bool:
    """Whether `host` (a normalised host name) is a public suffix, a name under which unrelated organisations
    register their domains (`com`, `co.uk`, `gov.uk`, `gob.mx`), which no blocked-domain list may hold: with
    subdomain matching it would drop every site under it.

    With tldextract installed, its bundled public suffix list (ICANN section, as the paper's filter reads it; no
    download) decides; without it, a built-in rule: a single label (a top-level domain), or `<label>.<country code>`
    where `<label>` is a generic second-level name (`co`, `com`, `gov`, `ac`, `org`, `net`, `edu`, `gob`, ...; see
    `_GENERIC_SECOND_LEVEL`) or the country code is one whose every second-level name is a suffix (`*.np`). The rule
    errs on the side of "a suffix", so it decides only names the list derives (`derived`: the www fallback, a
    `registrable_domain` result), where a miss only leaves the derived name off the list; a snapshot host whose own
    robots.txt closes its site (`derived=False`) is a suffix only by the public suffix list (the rule would take real
    domains such as `web.de`, `nic.at` or `localhost` for suffixes and let their pages through). IP addresses are never
    public suffixes."""
    if not host or _is_ip(host):
        return False
    extractor = _psl_extractor()
    if extractor:
        return extractor(host).suffix == host
    if not derived:
        return False
    if "." not in host:
        return True
    labels = host.split(".")
    return len(labels) == 2 and len(labels[1]) == 2 and (
        labels[0] in _GENERIC_SECOND_LEVEL or labels[1] in _WILDCARD_COUNTRY_CODES
    )


# Paths that stand for "the site" when deciding whether a host closes it: no rule names them, so only a rule that
# closes (nearly) every path disallows both (`Disallow: /`, `Disallow: /*`), not one that closes the homepage only
# (`Disallow: /$`) or some paths (`Disallow: /h`: the two start with different characters). The homepage `/` itself
# is not tested: `Allow: /$` with `Disallow: /` closes everything but it.
_SITE_PROBES = ("/hfextsiteprobe", "/0hfextsiteprobe")


def _root_url(host: str) -> str:
    return f"http://[{host}]/" if ":" in host else f"http://{host}/"


def _closes_site(checker: RobotsCompliance, host: str, groups) -> bool:
    """Whether the rules `groups` of `host` disallow every path of `_SITE_PROBES` for one checked agent."""
    root = _root_url(host)[:-1]
    agents = None
    for path in _SITE_PROBES:
        hit = set(checker._match_groups(root + path, groups, path=path))
        agents = hit if agents is None else agents & hit
        if not agents:
            return False
    return True


def build_blocked_domains(
    checker: RobotsCompliance, registrable_domain: Callable[[str], str] | None = None
) -> BlockedDomains:
    """The blocked-domain list of a robots.txt snapshot, for the coarse (domain-level) mode.

    A host of the snapshot is listed when its robots.txt closes its site for any of the checker's user agents: when
    it disallows, for one agent, generic paths that no rule names (`/hfextsiteprobe` and `/0hfextsiteprobe`,
    `_SITE_PROBES`), as `Disallow: /` or `Disallow: /*` do (with the checker's `host_fallback="www"`, a listed
    `www.x.com` also lists `x.com` when the snapshot has no record of `x.com`, as the checker then decides `x.com` by
    `www.x.com`'s file), as the checker decides it (its `backend`; its `status_policy`: under `"rfc9309"` an
    unreachable robots.txt, 5xx or a network error, disallows everything and lists the host, under `"paper"` it does
    not). The homepage alone does not decide: `Disallow: /$` (the homepage closed) is not listed, `Allow: /$` with
    `Disallow: /` (everything but the homepage closed) is. A host that disallows only some paths
    (`Disallow: /private/`) is not listed: the fine mode (`RobotsCompliance`, `filter_compliant(mode="fine")`) drops
    those URLs. A host that closes its site but allows some paths (`Disallow: /` with `Allow: /public/`) is listed,
    so the coarse mode drops its `/public/` documents too.

    The paper's list aggregates subdomains: a domain is listed when any of its subdomains opts out. That needs the
    registrable domain of each host (the public suffix list: `news.x.co.uk` -> `x.co.uk`), which hf_ext does not ship;
    pass it as `registrable_domain` (e.g. `lambda h: tldextract.extract(h).top_domain_under_public_suffix`, tldextract
    >= 5.3). Without
    it each listed host stands for itself and its own subdomains (`is_blocked_domain(..., match_subdomains=True)`).

    A public suffix (`com`, `co.uk`, `gov.uk`: see `_is_public_suffix`) is never listed, as listed it would drop
    every site under it: not `gov.uk` for a closed `www.gov.uk` (the www fallback), and a `registrable_domain` result
    that is one lists the host instead. For these derived names tldextract's bundled list decides when it is
    installed, else a built-in rule for `<generic label>.<country code>` that errs on the side of "a suffix". A
    snapshot host whose own robots.txt closes its site is left off only when tldextract's list says it is a suffix
    (its own pages are then left to the fine mode); without tldextract it is always listed, as the built-in rule also
    matches real domains (`web.de`, `nic.at`).

    Args:
        checker (`RobotsCompliance`): The snapshot (`checker.store`) and the decision settings (user agents,
            backend, status policy). Every host of the store is decided by its own record.
        registrable_domain (`Callable[[str], str]`, *optional*): Maps a listed host to the domain that is listed
            instead (its registrable domain). Its result is normalised; `""` or `None` (no registrable domain, e.g.
            an IP address) or a public suffix lists the host itself; another non-`str` result is a `TypeError`
            naming the host.

    Returns:
        `BlockedDomains`: the listed domains (a `frozenset` of normalised host names).
    """
    if not isinstance(checker, RobotsCompliance):
        raise TypeError(
            f"checker must be a RobotsCompliance, got {type(checker).__name__}; build one with "
            "RobotsCompliance(RobotsTxtStore.load(path), user_agents=[...])."
        )
    if registrable_domain is not None and not callable(registrable_domain):
        raise TypeError(
            f"registrable_domain must be a function host -> registrable domain (or None), got "
            f"{type(registrable_domain).__name__}."
        )
    listed = []
    for host in checker.store:
        policy = checker.policy(host)
        if not policy.groups or not _closes_site(checker, host, policy.groups):
            continue
        derived = False
        if registrable_domain is not None:
            domain = registrable_domain(host)
            if domain is not None and not isinstance(domain, str):
                raise TypeError(
                    f"registrable_domain({host!r}) returned {type(domain).__name__} {domain!r}, not a domain name; it "
                    "must map a host to its registrable domain (e.g. 'news.x.co.uk' -> 'x.co.uk'), or to '' / None "
                    "for a host without one."
                )
            domain = normalize_host(domain) if domain else ""
            # '' / None (an IP address, an unknown suffix) or a public suffix (a bad `registrable_domain`): the host
            if domain and not _is_public_suffix(domain):
                host, derived = domain, True
        # `gov.uk` listed would drop every `*.gov.uk` site: never listed (a snapshot host by the public suffix list
        # only: the built-in rule's misses would let a real domain's pages through)
        if not _is_public_suffix(host, derived):
            listed.append(host)
        if (
            checker.host_fallback == "www"
            and host.startswith("www.")
            and host[4:] not in checker.store
            and not _is_public_suffix(host[4:])
        ):
            # the checker decides `x.com` by `www.x.com`'s record when `x.com` has none: so must the list (the
            # other direction, `www.x.com` under a listed `x.com`, is a subdomain match); not `gov.uk` for
            # `www.gov.uk`, a public suffix (the fine mode decides the pages of `gov.uk` itself)
            listed.append(host[4:])
    # store keys (and normalised results) as they are: a key a URL host can equal is matched as the fine mode would
    return _blocked_domains_from_normalised(listed)


def is_blocked_domain(url: str | None, domains, match_subdomains: bool = True) -> bool:
    """Whether the host of `url` is a blocked domain (coarse mode).

    The host is normalised as the fine mode normalises it (`normalize_host`: port, userinfo, case, trailing dot,
    IDNA), so `https://User@X.COM.:8080/a` is on `x.com`.

    Args:
        url (`str` or `None`): A URL (or a bare host). `None` or a URL without a host is never blocked.
        domains (`BlockedDomains` or `Collection[str]`): The blocked domains (`build_blocked_domains`); another
            collection is normalised on every call, so build a `BlockedDomains(domains)` once for many URLs.
        match_subdomains (`bool`, *optional*, defaults to `True`): Also block every subdomain of a listed domain
            (`blog.x.com` when `x.com` is listed; never the other way round). `False`: the host only. IP addresses
            are matched whole.

    Returns:
        `bool`
    """
    if not isinstance(match_subdomains, bool):
        raise TypeError(f"match_subdomains must be True or False, got {match_subdomains!r}.")
    domains = BlockedDomains(domains)
    if url is None:
        return False
    if not isinstance(url, str):
        raise TypeError(f"url must be a str or None, got {type(url).__name__} {url!r}.")
    return _host_is_blocked(normalize_host(url), domains, match_subdomains)


def _coarse_keeps(url, domains: BlockedDomains, missing_kept: bool) -> bool:
    """The coarse mode's decision for one document URL: a missing URL (`None`, empty, or only spaces, tabs and
    newlines, as the fine mode reads it) is kept when the checker's `missing_url` is `"keep"`; any other URL when
    its host is not a blocked domain nor a subdomain of one."""
    if url is None:
        return missing_kept
    if not isinstance(url, str):
        raise TypeError(f"url must be a str or None, got {type(url).__name__} {url!r:.80}.")
    # as `RobotsCompliance.disallowed_agents` reads it: stripped when it starts or ends with a space or control
    if not url or (
        (url[0] <= " " or url[-1] <= " " or "\t" in url or "\n" in url or "\r" in url)
        and not _without_tab_newline(url).strip()
    ):
        return missing_kept
    return not _host_is_blocked(normalize_host(url), domains, True)


def _host_is_blocked(host: str, domains: BlockedDomains, match_subdomains: bool) -> bool:
    if not host:
        return False
    if host in domains:
        return True
    if not match_subdomains or _is_ip(host):
        return False
    dot = host.find(".")
    while dot != -1:
        host = host[dot + 1 :]
        if host in domains:
            return True
        dot = host.find(".")
    return False
