"""Mutation-testing kills (mu41) for the pass-35 compliance changes."""

from __future__ import annotations

from hf_ext.compliance.store import snapshot_is_empty


def test_a_jsonl_snapshot_of_only_a_byte_order_mark_is_empty(tmp_path):
    """The cheap emptiness check the recipe and the datatrove filter run before any output is made reads a JSONL
    snapshot as `load` does (a byte order mark skipped): a file holding only a BOM and blank lines has no host."""
    bom_only = tmp_path / "bom.jsonl"
    bom_only.write_bytes(b"\xef\xbb\xbf\n\n")
    assert snapshot_is_empty(bom_only)
    with_rows = tmp_path / "rows.jsonl"
    with_rows.write_bytes(b'\xef\xbb\xbf{"host": "a.com", "robots_txt": null}\n')
    assert not snapshot_is_empty(with_rows)
