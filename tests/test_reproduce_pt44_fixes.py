"""`rejudge(output_dir)` documents a `ValueError` for a `reproduction.json` that is not a report `hf-ext reproduce`
wrote; a JSON list (or string) failed with a bare `TypeError` and a report object without one of its fields (`fast`,
`seeds`, ...) with a bare `KeyError`. Both are now the `ValueError` naming the file, and the files are left as they
were."""

import json

import pytest


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ([1, 2], "JSON list"),
        ("report", "JSON str"),
        ({"method": "cubic_newton", "per_seed": []}, "has no date, fast, machine, seconds, seeds"),
        (
            {"method": "cubic_newton", "per_seed": {}, "fast": True, "seeds": [0], "seconds": 1.0, "date": "d",
             "machine": "m"},
            "per_seed is a JSON dict",
        ),
    ],
)  # fmt: skip
def test_a_foreign_reproduction_json_is_refused_by_name(tmp_path, content, why):
    from hf_ext.reproduce import rejudge

    path = tmp_path / "reproduction.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    (tmp_path / "reproduction.md").write_text("kept", encoding="utf-8")
    with pytest.raises(ValueError, match="is not a reproduction written by") as err:
        rejudge(str(tmp_path))
    assert why in str(err.value)
    assert json.loads(path.read_text(encoding="utf-8")) == content
    assert (tmp_path / "reproduction.md").read_text(encoding="utf-8") == "kept"
