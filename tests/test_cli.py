import os
import subprocess
import sys
import time

import pytest

from hf_ext import __version__
from hf_ext.cli import main
from hf_ext.recipes import available_recipes


def test_list_shows_every_recipe_with_a_line(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    recipes = available_recipes()
    assert "pretrain" in recipes
    for name, desc in recipes.items():
        assert desc, f"recipe {name} has no one-line description"
        assert name in out
    scripts = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts")
    for name in recipes:
        assert os.path.isfile(os.path.join(scripts, f"{name}.py")), f"scripts/{name}.py is missing"


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_run_forwards_arguments(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="--output_dir"):
        main(["run", "pretrain", "--output_dir", str(blocker / "x")])


def test_unknown_recipe_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "no_such_recipe"])
    assert exc.value.code == 2
    assert "pretrain" in capsys.readouterr().err


def test_console_script_and_import_is_fast_and_silent(repo_root):
    import resource

    env = {**os.environ}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", "import hf_ext"], capture_output=True, text=True, env=env, cwd=repo_root)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert res.returncode == 0
    assert res.stdout == "" and res.stderr == "", res.stderr
    # CPU time is what the import costs; wall time also counts other load on a shared machine
    assert cpu < 3.0, f"import hf_ext used {cpu:.2f} s of CPU"
    assert elapsed < 15.0
    exe = os.path.join(os.path.dirname(sys.executable), "hf-ext")
    res = subprocess.run([exe, "list"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "pretrain" in res.stdout
