"""Review of st36 F1 (the fetch-history fields of `RobotsRecord`): a bad `base_fetched_at` / `masked_fetched_at` is
refused naming that field, not `fetched_at` (rv37 F1)."""

import json
import re

import pytest

from hf_ext.compliance import RobotsTxtStore
from hf_ext.compliance.store import RobotsRecord


@pytest.mark.parametrize("field", ["base_fetched_at", "masked_fetched_at"])
def test_bad_history_date_names_its_field(field, tmp_path):
    with pytest.raises(TypeError, match=rf"^{field} of 'a.com' must be an ISO date string"):
        RobotsTxtStore().add("a.com", "User-agent: *\nDisallow: /\n", "2025-01-01", 200, **{field: 5})
    # the record is named in front (cd41: a bad field of a loaded record names where it is)
    with pytest.raises(TypeError, match=rf"^records\[0\]: {field} of 'a.com'"):
        RobotsTxtStore([RobotsRecord("a.com", None, "2025-01-01", 503, **{field: 7})])
    path = tmp_path / "s.jsonl"
    row = {"host": "a.com", "robots_txt": None, "fetched_at": "2025-01-01", "status": 503, field: 3}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(TypeError, match=rf"^{re.escape(str(path))}: record 0: {field} of 'a.com'"):
        RobotsTxtStore.load(path)
    # fetched_at itself is still named as before
    with pytest.raises(TypeError, match=r"^fetched_at of 'a.com'"):
        RobotsTxtStore().add("a.com", None, 5)
