"""docs/compliance.md says Protego reads a URL's `%24` as a rule's end anchor `$` (its own behaviour, not RFC 9309's),
so `backend="protego"` blocks `/a%24` under `Disallow: /a$` while the default and `google` backends allow it. If
Protego changes, this fails and the docs sentence must go."""

from __future__ import annotations

import pytest

from hf_ext.compliance import RobotsCompliance

ROBOTS = {"x.com": "User-agent: *\nDisallow: /a$\n"}


@pytest.mark.parametrize("backend, blocked", [("rfc9309", False), ("google", False), ("protego", True)])
def test_percent_24_is_no_end_anchor_except_in_protego(backend, blocked):
    if backend == "google":
        pytest.importorskip("robotstxt")
    rc = RobotsCompliance(ROBOTS, user_agents=["GPTBot"], backend=backend)
    assert rc.disallowed_agents("https://x.com/a") == ("GPTBot",)  # the rule itself applies on every backend
    assert (rc.disallowed_agents("https://x.com/a%24") == ("GPTBot",)) is blocked
