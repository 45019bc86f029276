"""bi29 audit: bad --outer_fraction values refused by name before any work."""

import pytest


@pytest.mark.parametrize("value", ["inf", "nan", "1", "1e300"])
def test_outer_fraction_out_of_range_refused_by_name(tmp_path, value):
    """F4: --outer_fraction inf failed with a bare OverflowError ("cannot convert float infinity to integer")."""
    from hf_ext.recipes.neuralgrok import main

    with pytest.raises(ValueError, match=r"--outer_fraction must be in \(0, 1\)"):
        main(["--outer_fraction", value, "--output_dir", str(tmp_path / "out"), "--report_to", "none"], plots=False)
    assert not (tmp_path / "out" / "neuralgrok_results.json").exists()
