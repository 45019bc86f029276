"""Benchmark robots.txt compliance decisions: cached Protego groups vs per-URL urllib.robotparser and plain Protego.

Prints one JSON line per configuration (decisions per second, agreement with the reference) and the speed-up ratios.
Default: 1M synthetic URLs over 10k hosts; `--num_urls 100000` for a quick run.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import urllib.robotparser

from protego import Protego

from hf_ext.compliance import DEFAULT_AI_USER_AGENTS, RobotsCompliance, RobotsTxtStore
from hf_ext.compliance.robots import normalize_host, protego_disallowed_agents

TEMPLATES = {
    # share of hosts, robots.txt body
    "missing": (0.25, None),
    "generic": (
        0.35,
        "User-agent: *\nDisallow: /admin/\nDisallow: /search\nDisallow: /*?sessionid=\nDisallow: /*.pdf$\n"
        "Sitemap: https://{host}/sitemap.xml\n",
    ),
    "ai_block": (
        0.15,
        "User-agent: GPTBot\nDisallow: /\n\nUser-agent: CCBot\nDisallow: /\n\nUser-agent: Google-Extended\n"
        "Disallow: /\n\nUser-agent: *\nDisallow: /private/\n",
    ),
    "ai_partial": (
        0.10,
        "User-agent: GPTBot\nUser-agent: ClaudeBot\nDisallow: /articles/\nAllow: /articles/free/\n\n"
        "User-agent: *\nDisallow: /cgi-bin/\nAllow: /\n",
    ),
    "search_only": (0.10, "User-agent: Googlebot\nAllow: /\n\nUser-agent: Bingbot\nDisallow: /tmp/\n"),
    "closed": (0.05, "User-agent: *\nDisallow: /\n"),
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
)


def synthetic_corpus(num_urls: int, num_hosts: int, seed: int) -> tuple[dict[str, str | None], list[str]]:
    rng = random.Random(seed)
    names = list(TEMPLATES)
    weights = [TEMPLATES[n][0] for n in names]
    robots: dict[str, str | None] = {}
    hosts = []
    for i in range(num_hosts):
        host = f"site{i}.example{rng.choice(['.com', '.org', '.net', '.ch'])}"
        body = TEMPLATES[rng.choices(names, weights)[0]][1]
        robots[host] = body.format(host=host) if body else None
        hosts.append(host)
    urls = []
    for _ in range(num_urls):
        host = hosts[rng.randrange(num_hosts)]
        if rng.random() < 0.1:
            host = f"{host}:8443"
        path = rng.choice(PATHS).format(slug=f"p{rng.randrange(10**6)}", n=rng.randrange(10**4))
        urls.append(f"https://{host}{path}")
    return robots, urls


class UrllibPerUrl:
    """urllib.robotparser, one parser per host (built on first use), asked for every agent for every URL."""

    def __init__(self, robots, agents):
        self.robots, self.agents = robots, agents
        self.parsers: dict[str, urllib.robotparser.RobotFileParser | None] = {}

    def __call__(self, urls):
        out = []
        for url in urls:
            host = normalize_host(url)
            if host not in self.parsers:
                text = self.robots.get(host)
                if text is None:
                    self.parsers[host] = None
                else:
                    rp = urllib.robotparser.RobotFileParser()
                    rp.parse(text.splitlines())
                    self.parsers[host] = rp
            rp = self.parsers[host]
            out.append(() if rp is None else tuple(a for a in self.agents if not rp.can_fetch(a, url)))
        return out


class ProtegoPerUrl:
    """Protego, one parser per host (built on first use), asked for every agent for every URL (no decision cache)."""

    def __init__(self, robots, agents):
        self.robots, self.agents = robots, agents
        self.parsers: dict[str, Protego | None] = {}

    def __call__(self, urls):
        out = []
        for url in urls:
            host = normalize_host(url)
            if host not in self.parsers:
                text = self.robots.get(host)
                self.parsers[host] = None if text is None else Protego.parse(text)
            out.append(protego_disallowed_agents(self.parsers[host], url, self.agents))
        return out


class Cached:
    """hf_ext's RobotsCompliance: per-host policies with agents grouped by their rules."""

    def __init__(self, robots, agents):
        self.checker = RobotsCompliance(RobotsTxtStore.from_dict(robots), user_agents=agents, host_fallback="exact")

    def __call__(self, urls):
        return self.checker.disallowed_agents_batch(urls)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_urls", type=int, default=1_000_000, help="Synthetic URLs (default 1M).")
    parser.add_argument("--num_hosts", type=int, default=10_000, help="Synthetic hosts (default 10k).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip_baselines", action="store_true", help="Only time the cached checker (no ratio is printed)."
    )
    parser.add_argument("--chunks", type=int, default=20, help="Interleaving chunks (methods take turns per chunk).")
    parser.add_argument("--output", default=None, help="Also write the JSON lines to this file.")
    args = parser.parse_args(argv)
    if args.num_urls < 1 or args.num_hosts < 1 or args.chunks < 1:
        parser.error("--num_urls, --num_hosts and --chunks must be positive.")

    robots, urls = synthetic_corpus(args.num_urls, args.num_hosts, args.seed)
    agents = DEFAULT_AI_USER_AGENTS
    device = f"CPU ({platform.processor() or platform.machine()}), python {platform.python_version()}"
    runners = {"protego_cached_groups": Cached(robots, agents)}
    if not args.skip_baselines:
        runners["urllib_robotparser_per_url"] = UrllibPerUrl(robots, agents)
        runners["protego_per_url_no_cache"] = ProtegoPerUrl(robots, agents)
    # The methods take turns on consecutive chunks of the URL stream, so a change in machine load during the run
    # affects all of them alike; each keeps its own parsers and caches across chunks.
    seconds = dict.fromkeys(runners, 0.0)
    decisions: dict[str, list] = {name: [] for name in runners}
    chunk = -(-len(urls) // args.chunks)
    for start in range(0, len(urls), chunk):
        part = urls[start : start + chunk]
        for name, fn in runners.items():
            t0 = time.perf_counter()
            decisions[name].extend(fn(part))
            seconds[name] += time.perf_counter() - t0
    results = []
    for name in runners:
        removed = sum(1 for d in decisions[name] if d)
        row = {
            "method": name,
            "num_urls": len(urls),
            "num_hosts": args.num_hosts,
            "num_agents": len(agents),
            "seconds": round(seconds[name], 3),
            "decisions_per_s": round(len(urls) / seconds[name], 1),
            "urls_removed_pct": round(100.0 * removed / len(urls), 3),
            "device": device,
        }
        if name != "protego_cached_groups":
            ref = decisions["protego_cached_groups"]
            row["agreement_with_cached_pct"] = round(
                100.0 * sum(1 for a, b in zip(ref, decisions[name]) if bool(a) == bool(b)) / len(urls), 3
            )
        results.append(row)
        print(json.dumps(row), flush=True)
    if not args.skip_baselines:
        rate = {r["method"]: r["decisions_per_s"] for r in results}
        summary = {
            "speedup_vs_urllib": round(rate["protego_cached_groups"] / rate["urllib_robotparser_per_url"], 2),
            "speedup_vs_protego_no_cache": round(rate["protego_cached_groups"] / rate["protego_per_url_no_cache"], 2),
            "cached_equals_protego_per_url": decisions["protego_cached_groups"] == decisions["protego_per_url_no_cache"],
            "device": device,
        }
        results.append(summary)
        print(json.dumps(summary), flush=True)
    if args.output:
        with open(args.output, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in results)
    return results


if __name__ == "__main__":
    main()
