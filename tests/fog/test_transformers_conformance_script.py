"""scripts/run_transformers_conformance.py: the command line, offline and fast (no transformers test files needed)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "run_transformers_conformance.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("run_transformers_conformance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_help_lists_the_tests_folder_and_testers():
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert "--transformers-tests" in result.stdout
    for tester in (
        "fog",
        "fog-recipe",
        "lp-merged",
        "lp-unmerged",
        "lp-block",
        "lp-qwen2",
        "lp-mistral",
        "grok",
        "llama-control",
    ):
        assert tester in result.stdout


def test_missing_folder_is_a_clear_usage_error(tmp_path):
    result = _run("--transformers-tests", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "--transformers-tests" in result.stderr and "no such folder" in result.stderr


def test_folder_without_the_common_testers_or_a_checkout_is_rejected(tmp_path):
    module = _load_script()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "test_modeling_common.py").write_text("")  # like the PyPI sdist: the two other files are missing
    with pytest.raises(ValueError, match=r"causal_lm_tester\.py, generation/test_utils\.py"):
        module.check_tests_dir(tmp_path)
    (tmp_path / "causal_lm_tester.py").write_text("")
    (tmp_path / "generation").mkdir()
    (tmp_path / "generation" / "test_utils.py").write_text("")
    with pytest.raises(ValueError, match="not inside a transformers source checkout"):
        module.check_tests_dir(tmp_path)


def test_tests_folder_of_a_checkout_is_accepted(tmp_path):
    module = _load_script()
    tests_dir = tmp_path / "tests"
    for name in ("__init__.py", "test_modeling_common.py", "causal_lm_tester.py", "generation/test_utils.py"):
        (tests_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (tests_dir / name).write_text("")
    (tmp_path / "src" / "transformers").mkdir(parents=True)
    (tmp_path / "src" / "transformers" / "__init__.py").write_text('__version__ = "5.24.0"\n')
    assert module.check_tests_dir(tests_dir) == tests_dir.resolve()


def test_checkout_version_is_read_from_the_source_tree(tmp_path):
    module = _load_script()
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    assert module.checkout_version(tests_dir) is None
    init = tmp_path / "src" / "transformers" / "__init__.py"
    init.parent.mkdir(parents=True)
    init.write_text('# header\n__version__ = "5.24.0"\n')
    assert module.checkout_version(tests_dir) == "5.24.0"


def test_counts_one_outcome_per_test_like_junit():
    from types import SimpleNamespace

    module = _load_script()
    counter = module._CountPerTester()

    def report(name, when, outcome, subtest=False):
        fields = {"nodeid": f"run_transformers_conformance.py::FogModelTest::{name}", "when": when, "outcome": outcome}
        if subtest:
            fields["context"] = object()
        counter.pytest_runtest_logreport(SimpleNamespace(**fields))

    report("test_plain", "call", "passed")
    report("test_all_subtests_skipped", "call", "skipped", subtest=True)
    report("test_all_subtests_skipped", "call", "skipped", subtest=True)
    report("test_all_subtests_skipped", "call", "passed")
    report("test_one_subtest_failed", "call", "passed", subtest=True)
    report("test_one_subtest_failed", "call", "failed", subtest=True)
    report("test_one_subtest_failed", "call", "passed")
    report("test_skipped_in_setup", "setup", "skipped")
    report("test_broken_teardown", "call", "passed")
    report("test_broken_teardown", "teardown", "failed")
    counts, failed, skipped = counter.summary()
    assert counts == {"FogModelTest": {"passed": 1, "failed": 2, "skipped": 2}}
    assert failed == ["FogModelTest::test_one_subtest_failed", "FogModelTest::test_broken_teardown"]
    assert skipped == ["FogModelTest::test_all_subtests_skipped", "FogModelTest::test_skipped_in_setup"]


def test_parallel_mixins_of_the_checkout_are_added_and_our_types_allowed(tmp_path, monkeypatch):
    """transformers' training / TP / FSDP2 mixins (tests/test_*_mixin.py) join an older causal-LM test class; their
    distributed-test allowlists gain our model types; a mixin file that does not import is an error, not a skip."""
    module = _load_script()
    (tmp_path / "__init__.py").write_text("")
    abstract = (
        "from abc import ABC, abstractmethod\n"
        "class {name}(ABC):\n"
        "    @property\n"
        "    @abstractmethod\n"
        "    def model_tester(self): ...\n"
    )
    (tmp_path / "test_training_mixin.py").write_text(abstract.format(name="TrainingTesterMixin"))
    (tmp_path / "test_tensor_parallel_mixin.py").write_text(
        abstract.format(name="TensorParallelTesterMixin") + "TP_DISTRIBUTED_TEST_MODEL_TYPES = {'qwen3'}\n"
    )
    for name in [n for n in sys.modules if n == module._PACKAGE or n.startswith(module._PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)
    module._load_tests_package(tmp_path)
    try:

        class OldCausalLMTest:
            def setUp(self):
                self.model_tester = "tester"

        combined = module._with_parallel_mixins(OldCausalLMTest, tmp_path)
        names = [base.__name__ for base in combined.__mro__]
        assert names[:2] == ["OldCausalLMTest", "OldCausalLMTest"]
        assert "TrainingTesterMixin" in names and "TensorParallelTesterMixin" in names
        instance = combined()  # not abstract any more
        instance.setUp()
        assert instance.model_tester == "tester"
        tp_module = sys.modules[f"{module._PACKAGE}.test_tensor_parallel_mixin"]
        assert {"qwen3", "fog", "layer_parallel", "llama"} <= tp_module.TP_DISTRIBUTED_TEST_MODEL_TYPES

        (tmp_path / "test_fsdp_mixin.py").write_text("from .distributed_testing_utils import run_distributed\n")
        with pytest.raises(ValueError, match="test_fsdp_mixin.py does not import"):
            module._with_parallel_mixins(OldCausalLMTest, tmp_path)
    finally:
        for name in [n for n in sys.modules if n == module._PACKAGE or n.startswith(module._PACKAGE + ".")]:
            sys.modules.pop(name, None)
