"""A datatrove filter step that drops documents whose URL opted out of AI crawling in robots.txt."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

try:
    from datatrove.data import Document
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.writers.disk_base import DiskWriter
except ImportError as err:  # datatrove is an optional extra
    if (getattr(err, "name", None) or "datatrove").split(".")[0] not in ("datatrove", "orjson"):
        raise
    raise ModuleNotFoundError(
        f"RobotsTxtFilter needs datatrove ({err}): install the extra with `pip install 'hf_ext[datatrove]'` "
        "(or `pip install -e '.[datatrove]'` from a checkout).",
        name="datatrove",
    ) from err

from .domains import BlockedDomains, _coarse_keeps, build_blocked_domains
from .rfc9309 import check_user_agents
from .robots import DEFAULT_AI_USER_AGENTS, RobotsCompliance
from .store import (
    _META_FILE,
    _STAGED_META_FILE,
    RobotsTxtStore,
    _empty_snapshot_message,
    _infer_format,
    snapshot_is_empty,
)


def _snapshot_fingerprint(path: str) -> str:
    """What identifies the snapshot at `path`, cheaply (no file is read): the size and modification time of a `.jsonl`
    or `.parquet` file, or of a folder's manifest (`_snapshot.json`, or the `_snapshot.json.staged` of a save killed
    after its commit, which `load` reads instead), which every `RobotsTxtStore.save` writes anew; for a folder
    without a manifest, a digest of the names, sizes and modification times of its `<host>.txt` files."""
    folder = Path(path)
    if folder.is_dir():
        manifest = next((folder / n for n in (_STAGED_META_FILE, _META_FILE) if (folder / n).is_file()), None)
        if manifest is None:
            listing = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.glob("*.txt"))
            return "files " + hashlib.sha256(repr(listing).encode("utf-8")).hexdigest()[:16]
        path = str(manifest)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return "missing"
    return f"{stat.st_size} bytes, modified {stat.st_mtime_ns} ns"


class RobotsTxtFilter(BaseFilter):
    """Keep a document only if no checked AI user agent is disallowed from its URL.

    Dropped documents get `metadata["disallowed_user_agents"]` (the agents that are disallowed) and the drop
    reason `"robots_txt"`, both visible to an `exclusion_writer` and in datatrove's stats
    (`dropped_robots_txt`; `dropped_unreachable_robots_txt` counts those dropped only because their host's robots.txt
    was unreachable, RFC 9309's complete disallow). A kept document carries no opt-out from an earlier run (e.g. a
    `removed/` output re-filtered against a newer snapshot): a `disallowed_user_agents` it holds becomes `[]`, as
    `annotate_compliance` and `filter_compliant` give, and a `filter_reason` of `"robots_txt"` is removed. Decisions
    are those of `RobotsCompliance`, so this step and `filter_compliant` on a `datasets.Dataset` drop exactly the same
    documents.
    Under a `LocalPipelineExecutor` or `SlurmPipelineExecutor` each task builds its own host cache and datatrove
    merges the per-task stats.

    Args:
        robots (`RobotsCompliance`, `RobotsTxtStore`, a snapshot path or a `{host: text}` mapping):
            Where robots.txt rules come from. A path (folder, `.jsonl`, `.parquet`, on a filesystem every task can
            read) is loaded by each task on first use, so the pickled pipeline stays small; a task that finds a
            snapshot saved over the one the step was built with fails with a `ValueError` (see
            `_snapshot_fingerprint`), so the tasks of one built pipeline never mix two snapshots.
        user_agents (`Sequence[str]`, *optional*, defaults to `DEFAULT_AI_USER_AGENTS`):
            Agents to check, each a product token alone or with a version (`"GPTBot"`, `"CCBot/2.0"`; a full
            User-Agent header or a name with a space is a `ValueError`, as in `RobotsCompliance`). With a ready `RobotsCompliance` the checker's own agents apply: passing other agents (or
            any other `RobotsCompliance` option, e.g. `status_policy=`) is a `ValueError`, since the step would
            ignore them; set them on the `RobotsCompliance` instead.
        **checker_kwargs: Other `RobotsCompliance` options (`host_fallback`, `status_policy`, `backend`,
            `missing_url`, `max_cached_hosts`) for a checker built from a store, mapping or snapshot path.
        url_key (`str`, *optional*, defaults to `"url"`): Key of `doc.metadata` holding the URL.
        exclusion_writer (`DiskWriter`, *optional*): Writer for the dropped documents.
        batch_size (`int`, *optional*, defaults to 1000): Documents decided per `filter_batch` call.
        mode (`str`, *optional*, defaults to `"fine"`): `"fine"` (URL-level, as above) or `"coarse"` (domain-level,
            as `filter_compliant(mode="coarse")`): every document whose host is a blocked domain or a subdomain of one
            is dropped with the reason `"robots_txt_domain"` (stat `dropped_robots_txt_domain`); documents are
            otherwise left as they are (no `disallowed_user_agents`: the list does not say which agents a URL is
            closed to). The list is `blocked_domains`, or `build_blocked_domains(checker)` built by each task on first
            use (every host of the snapshot decided once: pass the list for a large snapshot).
        blocked_domains (`BlockedDomains` or `Collection[str]`, *optional*): The coarse mode's list; only with
            `mode="coarse"`.
    """

    name = "🤖 robots.txt opt-out"

    def __init__(
        self,
        robots,
        user_agents: Sequence[str] | None = None,
        url_key: str = "url",
        exclusion_writer: DiskWriter | None = None,
        batch_size: int = 1000,
        mode: str = "fine",
        blocked_domains=None,
        **checker_kwargs,
    ):
        if not isinstance(url_key, str) or not url_key:
            raise ValueError("url_key must name the metadata field holding the URL, e.g. 'url'.")
        if mode not in ("fine", "coarse"):
            raise ValueError(
                f"mode must be 'fine' (URL-level) or 'coarse' (every document of a blocked domain dropped), got {mode!r}."
            )
        if blocked_domains is not None and mode != "coarse":
            raise ValueError(
                "blocked_domains is the coarse mode's list, which mode='fine' would ignore; pass mode='coarse' with "
                "it, or drop blocked_domains."
            )
        self.mode = mode
        self._blocked_domains = None if blocked_domains is None else BlockedDomains(blocked_domains)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if exclusion_writer is not None and not isinstance(exclusion_writer, DiskWriter):
            # datatrove opens it in every task's run (`with self.exclusion_writer`): a path would fail there, raw
            raise TypeError(
                f"exclusion_writer must be a datatrove DiskWriter (or None), got {type(exclusion_writer).__name__} "
                f"{exclusion_writer!r:.80}; e.g. exclusion_writer=JsonlWriter('removed/')."
            )
        if not isinstance(robots, RobotsCompliance | RobotsTxtStore | Mapping | str) and not hasattr(
            robots, "__fspath__"
        ):
            raise TypeError(
                f"robots must be a RobotsCompliance, a RobotsTxtStore, a snapshot path (folder, .jsonl or .parquet) "
                f"or a mapping host -> robots.txt text, got {type(robots).__name__}."
            )
        self._snapshot_path = None
        if user_agents is not None and not isinstance(user_agents, str) and isinstance(user_agents, Iterable):
            user_agents = list(user_agents)
            # before the ready-checker comparison: a full User-Agent header is refused as such, naming the fix
            check_user_agents([a for a in user_agents if isinstance(a, str)], "user_agents")
        if isinstance(robots, RobotsCompliance):
            # the checker decides with its own settings: options given beside it would be silently ignored
            given = sorted(checker_kwargs)
            if user_agents is not None and tuple(dict.fromkeys(user_agents)) != robots.user_agents:
                given.insert(0, "user_agents")
            if given:
                raise ValueError(
                    f"RobotsTxtFilter got a ready RobotsCompliance and also {', '.join(given)}, which it would ignore: "
                    "the checker decides with its own settings. Set them on the RobotsCompliance (e.g. "
                    "RobotsCompliance(store, status_policy='paper')), or pass the store or snapshot path instead."
                )
        user_agents = DEFAULT_AI_USER_AGENTS if user_agents is None else user_agents
        self._checker_kwargs = dict(user_agents=user_agents, **checker_kwargs)
        if isinstance(robots, RobotsCompliance):
            checker = robots
            self._missing_url = checker.missing_url
        elif isinstance(robots, str) or hasattr(robots, "__fspath__"):
            # A snapshot path is loaded by each task on first use, not here: the pipeline that datatrove pickles and
            # ships to every worker / Slurm job then carries the path, not millions of robots.txt texts.
            path = os.fspath(robots)
            if not os.path.exists(path):
                raise ValueError(f"robots snapshot {path!r} does not exist; pass a folder, .jsonl or .parquet file.")
            if _infer_format(Path(path)) == "folder" and not os.path.isdir(path):
                raise ValueError(f"robots snapshot {path!r} is a file but not .jsonl or .parquet; pass a folder or one of those.")
            if os.path.isdir(path) and not (
                os.path.isfile(os.path.join(path, "_snapshot.json")) or any(Path(path).glob("*.txt"))
            ):  # checked here, not in every task at its first document
                raise ValueError(
                    f"robots snapshot folder {path!r} holds no <host>.txt files and no _snapshot.json; pass a folder "
                    "written by RobotsTxtStore.save, a .jsonl or a .parquet file."
                )
            if snapshot_is_empty(path):  # as RobotsTxtStore.load refuses it, here and not in every task
                raise ValueError(_empty_snapshot_message(Path(path)))
            # validate the options before any work; its resolved missing_url serves the coarse mode with a given
            # blocked_domains, which then never loads the snapshot
            self._missing_url = RobotsCompliance({}, **self._checker_kwargs).missing_url
            self._snapshot_path, checker = path, None
            # each task loads the path when it starts (a Slurm array task hours later, a requeued job): it must find
            # the snapshot this step was built with, not one saved over it since
            self._snapshot_fingerprint = _snapshot_fingerprint(path)
        else:
            checker = RobotsCompliance(robots, **self._checker_kwargs)
            self._missing_url = checker.missing_url
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self._checker = checker
        self.url_key = url_key

    @property
    def checker(self) -> RobotsCompliance:
        """The `RobotsCompliance` behind the step (built from the snapshot path on first use)."""
        if self._checker is None:
            self._check_snapshot_unchanged()
            store = RobotsTxtStore.load(self._snapshot_path)
            self._check_snapshot_unchanged()  # and not saved anew while it was read
            self._checker = RobotsCompliance(store, **self._checker_kwargs)
        return self._checker

    def _check_snapshot_unchanged(self) -> None:
        now = _snapshot_fingerprint(self._snapshot_path)
        if now != self._snapshot_fingerprint:
            raise ValueError(
                f"robots snapshot {self._snapshot_path!r} changed since this RobotsTxtFilter was built (then: "
                f"{self._snapshot_fingerprint}; now: {now}): this task would decide its documents by other rules "
                "than the tasks before it, mixing two snapshots in one output. Run every task again with one snapshot "
                "(new output and logging folders); save a refreshed snapshot to a new path, not over the one a run "
                "uses."
            )

    def _url(self, doc: Document) -> str | None:
        if self.url_key not in doc.metadata:
            raise ValueError(
                f"document {doc.id!r} has no metadata[{self.url_key!r}]; set url_key to the metadata field that "
                f"holds the URL (present fields: {sorted(doc.metadata)})."
            )
        url = doc.metadata[self.url_key]
        if url is not None and not isinstance(url, str):  # the checker's TypeError would name no document
            raise TypeError(
                f"url must be a str or None, got {type(url).__name__}: document {doc.id!r} has "
                f"metadata[{self.url_key!r}] = {url!r:.80}; set url_key to the metadata field that holds the URL."
            )
        return url

    def _result(self, doc: Document, agents: tuple[str, ...]) -> bool | tuple[bool, str]:
        if not agents:
            # no stale opt-out on a kept document (e.g. one of a previous run's `removed/` output, re-filtered with a
            # newer snapshot): its `disallowed_user_agents` are replaced, as `annotate_compliance` replaces the column
            if "disallowed_user_agents" in doc.metadata:
                doc.metadata["disallowed_user_agents"] = []
            if doc.metadata.get("filter_reason") == "robots_txt":
                del doc.metadata["filter_reason"]
            return True
        doc.metadata["disallowed_user_agents"] = list(agents)
        for agent in agents:
            self.stat_update(f"disallowed_{agent}")
        url = self._url(doc)
        if url and self.checker.policy_for_url(url).status_class == "unreachable":
            # RFC 9309: a robots.txt that could not be fetched (5xx, network error) disallows everything
            self.stat_update("dropped_unreachable_robots_txt")
        return False, "robots_txt"

    @property
    def blocked_domains(self) -> BlockedDomains:
        """The coarse mode's list (built from the snapshot on first use when none was given)."""
        if self._blocked_domains is None:
            self._blocked_domains = build_blocked_domains(self.checker)
        return self._blocked_domains

    def _coarse_result(self, doc: Document) -> bool | tuple[bool, str]:
        if not _coarse_keeps(self._url(doc), self.blocked_domains, self._missing_url == "keep"):
            return False, "robots_txt_domain"
        if doc.metadata.get("filter_reason") == "robots_txt_domain":  # an earlier run's, as in the fine mode
            del doc.metadata["filter_reason"]
        return True

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self.mode == "coarse":
            return self._coarse_result(doc)
        return self._result(doc, self.checker.disallowed_agents(self._url(doc)))

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        if self.mode == "coarse":
            return [self._coarse_result(doc) for doc in batch]
        decisions = self.checker.disallowed_agents_batch([self._url(doc) for doc in batch])
        return [self._result(doc, agents) for doc, agents in zip(batch, decisions)]
