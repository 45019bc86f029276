"""Benchmark robots.txt compliance decisions: hf_ext's RobotsCompliance vs plain cached-parser baselines.

All methods see the same synthetic snapshot (robots.txt bodies plus HTTP status classes) and URL stream, in one run,
taking turns chunk by chunk so a change in machine load hits them alike. Methods:

* `hf_ext` - `RobotsCompliance` (default backend `rfc9309`): per-host policy cache, agents grouped by their rules;
* `rfc9309_cached_parser` - the fair baseline and the reference for decisions: each host's robots.txt parsed once with
  the same engine (`RobotsTxt.parse`), then the engine's own per-agent check (`allowed(url, agent)`) for every agent
  and URL;
* `protego_cached_parser` - the data-compliance paper's approach: `Protego.parse` once per host, `can_fetch` per
  agent and URL (different semantics: prefix agent matching; agreement is reported, not required);
* `google_reference` (on `--google_sample` URLs, if `fast-robotstxt` is installed) - Google's parser, which re-parses
  the file on every call; agreement with hf_ext is reported.

Prints one JSON line per method and a summary line with the speed-up ratios; `--output` also writes them to a file.
Default: 1M URLs over 10k hosts and the 15 default agents.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

from protego import Protego

from hf_ext.compliance import DEFAULT_AI_USER_AGENTS, RobotsCompliance, RobotsTxt, RobotsTxtStore, normalize_host
from hf_ext.compliance.robots import status_class
from hf_ext.utils.argtypes import output_file

TEMPLATES = {
    # share of hosts, (HTTP status, robots.txt body)
    "missing": (0.20, (404, None)),
    "unreachable": (0.03, (503, None)),
    "generic": (
        0.32,
        (
            200,
            "User-agent: *\nDisallow: /admin/\nDisallow: /search\nDisallow: /*?sessionid=\nDisallow: /*.pdf$\n"
            "Sitemap: https://{host}/sitemap.xml\n",
        ),
    ),
    "ai_block": (
        0.15,
        (
            200,
            "User-agent: GPTBot\nDisallow: /\n\nUser-agent: CCBot\nDisallow: /\n\nUser-agent: Google-Extended\n"
            "Disallow: /\n\nUser-agent: *\nDisallow: /private/\n",
        ),
    ),
    "ai_partial": (
        0.10,
        (
            200,
            "User-agent: GPTBot\nUser-agent: ClaudeBot\nDisallow: /articles/\nAllow: /articles/free/\n\n"
            "User-agent: *\nDisallow: /cgi-bin/\nAllow: /\n",
        ),
    ),
    "product_tokens": (
        0.05,
        (
            200,
            "User-agent: Applebot\nUser-agent: Google\nDisallow: /\n\nUser-agent: CCBot/2.0\nDisallow: /blog/\n"
            "\nUser-agent: *\nDisallow: /caf\u00e9/\n",
        ),
    ),
    "search_only": (0.10, (200, "User-agent: Googlebot\nAllow: /\n\nUser-agent: Bingbot\nDisallow: /tmp/\n")),
    "closed": (0.05, (200, "User-agent: *\nDisallow: /\n")),
}
PATHS = (
    "/",
    "/articles/{slug}",
    "/articles/free/{slug}",
    "/admin/{slug}",
    "/search?q={slug}",
    "/private/{slug}.html",
    "/products/{n}?sessionid={n}",
    "/blog/{n}/{slug}",
    "/docs/{slug}.pdf",
    "/tmp/{slug}",
    "/caf%C3%A9/{slug}",
)


def synthetic_corpus(num_urls: int, num_hosts: int, seed: int) -> tuple[RobotsTxtStore, list[str]]:
    rng = random.Random(seed)
    names = list(TEMPLATES)
    weights = [TEMPLATES[n][0] for n in names]
    store = RobotsTxtStore(fetched_at="2025-01-15")
    hosts = []
    for i in range(num_hosts):
        host = f"site{i}.example{rng.choice(['.com', '.org', '.net', '.ch'])}"
        status, body = TEMPLATES[rng.choices(names, weights)[0]][1]
        store.add(host, body.format(host=host) if body else None, status=status)
        hosts.append(host)
    urls = []
    for _ in range(num_urls):
        host = hosts[rng.randrange(num_hosts)]
        if rng.random() < 0.1:
            host = f"{host}:8443"
        path = rng.choice(PATHS).format(slug=f"p{rng.randrange(10**6)}", n=rng.randrange(10**4))
        urls.append(f"https://{host}{path}")
    return store, urls


class CachedParser:
    """One parser per host, built on first use; every agent asked for every URL (the engine's own check).

    Status classes are handled the same way as in `RobotsCompliance` (RFC 9309: unreachable -> every agent
    disallowed, unavailable -> all allowed), so decisions are comparable.
    """

    def __init__(self, store: RobotsTxtStore, agents, parse, check):
        self.store, self.agents, self.parse, self.check = store, tuple(agents), parse, check
        self.parsers: dict[str, object] = {}

    def _parser(self, host: str):
        if host not in self.parsers:
            record = self.store._records.get(host)
            cls = "missing" if record is None else status_class(record.text, record.status, record.error)
            self.parsers[host] = (
                "unreachable" if cls == "unreachable" else (self.parse(record.text) if cls == "available" else None)
            )
        return self.parsers[host]

    def __call__(self, urls):
        out = []
        agents, check = self.agents, self.check
        for url in urls:
            parser = self._parser(normalize_host(url))
            if parser is None:
                out.append(())
            elif parser == "unreachable":
                out.append(agents)
            else:
                out.append(tuple(a for a in agents if not check(parser, url, a)))
        return out


def _rfc_check(parser, url, agent):
    return parser.allowed(url, agent)


def _protego_check(parser, url, agent):
    return parser.can_fetch(url, agent)


class HfExt:
    def __init__(self, store, agents):
        self.checker = RobotsCompliance(store, user_agents=agents, host_fallback="exact")

    def __call__(self, urls):
        return self.checker.disallowed_agents_batch(urls)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_urls", type=int, default=1_000_000, help="Synthetic URLs (default 1M).")
    parser.add_argument("--num_hosts", type=int, default=10_000, help="Synthetic hosts (default 10k).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=20, help="Interleaving chunks (methods take turns per chunk).")
    parser.add_argument(
        "--google_sample", type=int, default=20_000, help="URLs also decided by Google's parser (0: skip)."
    )
    parser.add_argument("--output", type=output_file, default=None, help="Also write the JSON lines to this file.")
    args = parser.parse_args(argv)
    if args.num_urls < 1 or args.num_hosts < 1 or args.chunks < 1 or args.google_sample < 0:
        parser.error("--num_urls, --num_hosts and --chunks must be positive and --google_sample >= 0.")

    store, urls = synthetic_corpus(args.num_urls, args.num_hosts, args.seed)
    agents = DEFAULT_AI_USER_AGENTS
    device = f"CPU ({platform.processor() or platform.machine()}), python {platform.python_version()}"
    runners = {
        "hf_ext": HfExt(store, agents),
        "rfc9309_cached_parser": CachedParser(store, agents, RobotsTxt.parse, _rfc_check),
        "protego_cached_parser": CachedParser(store, agents, Protego.parse, _protego_check),
    }
    seconds = dict.fromkeys(runners, 0.0)
    decisions: dict[str, list] = {name: [] for name in runners}
    chunk = -(-len(urls) // args.chunks)
    for start in range(0, len(urls), chunk):
        part = urls[start : start + chunk]
        for name, fn in runners.items():
            t0 = time.perf_counter()
            decisions[name].extend(fn(part))
            seconds[name] += time.perf_counter() - t0

    reference = decisions["rfc9309_cached_parser"]
    results = []
    for name in runners:
        removed = sum(1 for d in decisions[name] if d)
        row = {
            "method": name,
            "num_urls": len(urls),
            "num_hosts": args.num_hosts,
            "num_agents": len(agents),
            "seconds": round(seconds[name], 3),
            "urls_per_s": round(len(urls) / seconds[name], 1),
            "urls_removed_pct": round(100.0 * removed / len(urls), 3),
            "agreement_with_reference_pct": round(
                100.0 * sum(1 for a, b in zip(reference, decisions[name]) if a == b) / len(urls), 3
            ),
            "device": device,
        }
        results.append(row)
        print(json.dumps(row), flush=True)

    google_agreement = None
    if args.google_sample:
        try:
            google = CachedParser(store, agents, lambda text: text, _google_check())
        except ImportError:
            google = None
        if google is not None:
            sample = urls[: args.google_sample]
            t0 = time.perf_counter()
            google_decisions = google(sample)
            elapsed = time.perf_counter() - t0
            same = sum(1 for a, b in zip(decisions["hf_ext"], google_decisions) if a == b)
            google_agreement = round(100.0 * same / len(sample), 3)
            row = {
                "method": "google_reference",
                "num_urls": len(sample),
                "seconds": round(elapsed, 3),
                "urls_per_s": round(len(sample) / elapsed, 1),
                "agreement_with_hf_ext_pct": google_agreement,
                "device": device,
            }
            results.append(row)
            print(json.dumps(row), flush=True)

    rate = {r["method"]: r["urls_per_s"] for r in results}
    summary = {
        "speedup_vs_rfc9309_cached_parser": round(rate["hf_ext"] / rate["rfc9309_cached_parser"], 2),
        "speedup_vs_protego_cached_parser": round(rate["hf_ext"] / rate["protego_cached_parser"], 2),
        "hf_ext_equals_reference": decisions["hf_ext"] == reference,
        "google_agreement_pct": google_agreement,
        "device": device,
    }
    results.append(summary)
    print(json.dumps(summary), flush=True)
    if args.output:
        with open(args.output, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in results)
    return results


def _google_check():
    from robotstxt import RobotsMatcher

    from hf_ext.compliance.robots import _GoogleMatcher

    RobotsMatcher()  # raises ImportError above when the package is missing

    matchers: dict[tuple[str, str], _GoogleMatcher] = {}

    def check(text: str, url: str, agent: str) -> bool:
        key = (text, agent)
        matcher = matchers.get(key)
        if matcher is None:
            from hf_ext.compliance import product_token

            matcher = matchers[key] = _GoogleMatcher(text, product_token(agent) if agent != "*" else "*")
        return matcher.allowed(url)

    return check


if __name__ == "__main__":
    main()
