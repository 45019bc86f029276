"""mu42: a test that kills a mutant of pass 36's wrapper parse which its own tests let survive: the `--config` path
as lm-eval's parser reads it (`-wC cfg.yaml`: `-C` joined after the flag `-w`, which a scan for `-C` misses) decides
whether the packaged --include_path is added. (`--conf` is no spelling: argparse finds it ambiguous with
`--confirm_run_unsafe_code`.)"""

import pytest

from .conftest import run_wrapper

pytest.importorskip("lm_eval")


@pytest.mark.parametrize("spelling", [["-wC", "{}"], ["-wC{}"], ["--config", "{}"], ["-C{}"]])
def test_an_abbreviated_config_with_its_own_include_path_keeps_it(tmp_path, monkeypatch, spelling):
    # a YAML config that sets include_path: the packaged --include_path on the command line would replace it
    (tmp_path / "mine").mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(f"include_path: {tmp_path / 'mine'}\ntasks: my_task\n")
    argv = ["run", *[s.format(config) for s in spelling]]
    ran = run_wrapper(argv, monkeypatch)
    assert ran and "--include_path" not in ran[0]
