"""robots.txt opt-out filtering for `datasets` and datatrove, retention statistics and the data compliance gap."""

from .dataset_ops import annotate_compliance, filter_compliant
from .dcg import DCGReport, compute_dcg
from .domains import BlockedDomains, build_blocked_domains, is_blocked_domain
from .rfc9309 import RobotsTxt, product_token
from .robots import DEFAULT_AI_USER_AGENTS, DomainPolicy, RobotsCompliance, normalize_host, status_class
from .stats import RetentionStats, compute_retention_stats
from .store import RobotsRecord, RobotsTxtStore, fetch_robots_txt, load_example_robots

__all__ = [
    "BlockedDomains",
    "DCGReport",
    "DEFAULT_AI_USER_AGENTS",
    "DomainPolicy",
    "RetentionStats",
    "RobotsCompliance",
    "RobotsRecord",
    "RobotsTxt",
    "RobotsTxtFilter",
    "RobotsTxtStore",
    "annotate_compliance",
    "build_blocked_domains",
    "compute_dcg",
    "compute_retention_stats",
    "fetch_robots_txt",
    "filter_compliant",
    "is_blocked_domain",
    "load_example_robots",
    "normalize_host",
    "product_token",
    "status_class",
]


def __getattr__(name: str):
    if name == "RobotsTxtFilter":  # needs the optional datatrove dependency
        from .datatrove_filter import RobotsTxtFilter

        return RobotsTxtFilter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
