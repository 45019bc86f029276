"""A folder snapshot save is all or nothing: killed at any rename or removal it makes, a reload gives exactly the old
snapshot or exactly the new one (never new robots.txt texts under the old statuses and dates, nor the reverse), and
the next save finishes cleanly."""

import os

import pytest

from hf_ext.compliance import RobotsTxtStore


class _Killed(BaseException):
    pass


def _as_dict(store):
    return {h: (r.text, r.fetched_at, r.status, r.error) for h, r in ((h, store[h]) for h in store)}


def _old():
    s = RobotsTxtStore(fetched_at="2024-01-01")
    s.add("a.com", "User-agent: *\nDisallow: /old-a\n", "2024-01-01", 200)
    s.add("b.com", "User-agent: *\nDisallow: /old-b\n", "2024-01-02", 200)
    s.add("gone.com", "User-agent: *\nDisallow: /\n", "2024-01-03", 200)  # not in the new snapshot
    s.add("down.com", None, "2024-01-04", 503)
    return s


def _new():
    s = RobotsTxtStore(fetched_at="2025-06-01")
    s.add("a.com", "User-agent: *\nDisallow: /new-a\n", "2025-06-01", 200)
    s.add("b.com", None, "2025-06-02", 404)  # lost its file: allow all now
    s.add("down.com", "User-agent: GPTBot\nDisallow: /\n", "2025-06-03", 200)  # gained one
    s.add("fresh.com", "User-agent: *\nAllow: /\n", "2025-06-04", 200)
    return s


def _kill_at(monkeypatch, kill_at, ops=("replace", "remove")):
    """Make the `kill_at`-th call of the given `os` file operations raise, as a process killed there would stop."""
    calls = {"n": 0}

    def wrap(real):
        def op(*a, **k):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise _Killed
            return real(*a, **k)

        return op

    for name in ops:
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))


def _count_steps(tmp_path, monkeypatch):
    folder = tmp_path / "count"
    _old().save(folder)
    calls = {"n": 0}
    real_replace, real_remove = os.replace, os.remove

    def replace(*a, **k):
        calls["n"] += 1
        return real_replace(*a, **k)

    def remove(*a, **k):
        calls["n"] += 1
        return real_remove(*a, **k)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "remove", remove)
    _new().save(folder)
    monkeypatch.undo()
    return calls["n"]


def test_a_folder_save_killed_at_any_step_reloads_as_the_old_or_the_new_snapshot(tmp_path, monkeypatch):
    old, new = _as_dict(_old()), _as_dict(_new())
    steps = _count_steps(tmp_path, monkeypatch)
    assert steps >= 6  # every host file and the manifest written, and the removal of gone.com.txt
    seen = set()
    for kill_at in range(1, steps + 1):
        folder = tmp_path / f"k{kill_at}"
        _old().save(folder)
        (folder / "notes.txt.bak").write_text("the user's own file")
        _kill_at(monkeypatch, kill_at)
        with pytest.raises(_Killed):
            _new().save(folder)
        monkeypatch.undo()
        got = _as_dict(RobotsTxtStore.load(folder))
        assert got in (old, new), kill_at
        seen.add("new" if got == new else "old")
        # the next save (here: of the new snapshot again) finishes cleanly and leaves nothing staged
        _new().save(folder)
        assert _as_dict(RobotsTxtStore.load(folder)) == new
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".staged") or p.name.endswith(".tmp")]
        assert not (folder / "gone.com.txt").exists()
        assert (folder / "notes.txt.bak").read_text() == "the user's own file"
    assert seen == {"old", "new"}  # early kills keep the old snapshot, late ones already give the new


def test_a_killed_save_followed_by_a_save_of_another_snapshot_gives_that_snapshot(tmp_path, monkeypatch):
    third = RobotsTxtStore(fetched_at="2026-01-01")
    third.add("only.com", "User-agent: *\nDisallow: /x\n", "2026-01-01", 200)
    steps = _count_steps(tmp_path, monkeypatch)
    for kill_at in range(1, steps + 1):
        folder = tmp_path / f"t{kill_at}"
        _old().save(folder)
        _kill_at(monkeypatch, kill_at, ops=("replace",))
        try:
            _new().save(folder)
        except _Killed:
            pass
        monkeypatch.undo()
        third.save(folder)
        assert _as_dict(RobotsTxtStore.load(folder)) == _as_dict(third), kill_at
        assert sorted(p.name for p in folder.iterdir()) == ["_snapshot.json", "only.com.txt"], kill_at


def _host(length):
    """A valid DNS name of `length` characters (labels of at most 63)."""
    label = "a" * 63
    return ".".join([label, label, label, "b" * (length - 3 * 64 - 4)]) + ".com"


@pytest.mark.parametrize("length", [235, 244, 253])
def test_a_host_of_any_dns_length_saves_and_reloads_in_a_folder(tmp_path, monkeypatch, length):
    """DNS allows 253 characters; from 230 on the staged file's temporary name, from 244 the staged file and from 252
    `<host>.txt` itself passed the 255-byte file-name limit: the save failed with ENAMETOOLONG after staging other
    hosts. A host whose staged file would not fit is saved under a shortened name that `_snapshot.json` maps back."""
    from hf_ext.compliance import RobotsCompliance

    host = _host(length)
    assert len(host) == length
    new = _new()
    new.add(host, "User-agent: GPTBot\nDisallow: /private\n", "2025-06-05", 200)
    folder = tmp_path / "snap"
    _old().save(folder)
    new.save(folder)
    assert _as_dict(RobotsTxtStore.load(folder)) == _as_dict(new)
    assert all(len(p.name.encode()) <= 255 for p in folder.iterdir())
    assert not [p.name for p in folder.iterdir() if p.name.endswith((".staged", ".tmp"))]
    checker = RobotsCompliance(RobotsTxtStore.load(folder), user_agents=["GPTBot"])
    assert checker.disallowed_agents(f"https://{host}/private/x") == ("GPTBot",)
    assert checker.disallowed_agents(f"https://{host}/public") == ()
    # a save over it that is killed at any step still gives the old or the new snapshot, and the next save finishes
    newer = RobotsTxtStore(fetched_at="2026-01-01")
    newer.add(host, "User-agent: *\nDisallow: /\n", "2026-01-01", 200)
    newer.add(_host(length - 1), "User-agent: CCBot\nDisallow: /\n", "2026-01-01", 200)
    kill_at, killed = 0, True
    while killed:  # every rename and removal of the save, then one past the last (the save completes)
        kill_at += 1
        folder = tmp_path / f"k{kill_at}"
        new.save(folder)
        _kill_at(monkeypatch, kill_at)
        try:
            newer.save(folder)
            killed = False
        except _Killed:
            pass
        monkeypatch.undo()
        assert _as_dict(RobotsTxtStore.load(folder)) in (_as_dict(new), _as_dict(newer)), kill_at
        newer.save(folder)
        assert _as_dict(RobotsTxtStore.load(folder)) == _as_dict(newer), kill_at
        assert len(list(folder.iterdir())) == 3, kill_at  # the two host files and _snapshot.json
    assert kill_at >= 8  # 3 atomic writes, 2 renames, 3 removals, the manifest's rename
