"""Run transformers' own common model tests against hf_ext's FOG and layer-parallel models.

transformers' `ModelTesterMixin` (tests/test_modeling_common.py), `GenerationTesterMixin`
(tests/generation/test_utils.py) and causal-LM tester (tests/causal_lm_tester.py) are not installed with the
package; point this script at the `tests` folder of a transformers source checkout that matches the installed version
(`git clone https://github.com/huggingface/transformers`, then `git checkout v<installed version>`; the pipeline
tester also reads the checkout's `src/transformers`). Nothing of transformers' test code is part of hf_ext: the
script only declares the testers (one `CausalLMModelTester` subclass per model or mode) and runs pytest on them.

    python scripts/run_transformers_conformance.py --transformers-tests ~/src/transformers/tests
    python scripts/run_transformers_conformance.py --transformers-tests DIR --models lp-merged lp-block -- -k generate

Testers (`--models`, default: all):
    fog            FogForCausalLM / FogModel, default FogConfig
    fog-recipe     the same with `FogConfig.fog()` (post-norm, frozen QK gains, xIELU, ...)
    lp-merged      LayerParallelForCausalLM, 3 source layers, pair (1, 2) merged, "sublayer" form -> 2 cache slots
    lp-unmerged    2 source layers, pair (0, 1) unmerged -> 2 cache slots
    lp-block       3 source layers, pair (1, 2) merged, "block" form -> 2 cache slots
    lp-qwen2       as lp-merged, from a Qwen2 source config (q/k/v biases)
    lp-mistral     as lp-merged, from a Mistral source config
    grok           NeuralGrok's GrokDecoderForCausalLM (no separate base model, so transformers' `ModelTesterMixin` and
                   `GenerationTesterMixin` directly, not the causal-LM tester; no KV cache, no SDPA)
    llama-control  transformers' LlamaForCausalLM through the same harness (tells harness artifacts from our defects)

Where the checkout has transformers' training, tensor-parallel and FSDP2 mixins (tests/test_training_mixin.py,
test_tensor_parallel_mixin.py, test_fsdp_mixin.py: 5.x), every tester runs them too: overfitting a batch, TP=2 forward /
backward / generation against the unsharded model, and FSDP2 (transformers' own `DistributedConfig(fsdp_size=...)`)
against DDP, on 2 CPU ranks (gloo). Our model types join the mixins' allowlists of model types. The distributed mixins
import the checkout's tests/distributed_testing_utils.py (not in the PyPI sdist).

The testers need `parameterized` (`pip install parameterized`). `HF_HUB_OFFLINE` defaults to 1: pipeline tests that
need the Hub's tiny models (only the Llama control has any) then skip or fail; set `HF_HUB_OFFLINE=0` to run them. Prints passed / failed / skipped per tester and the
failing test ids; `--report PATH` also writes them, and the skipped test ids, as JSON. Exit status: pytest's (0 when nothing failed).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import unittest
from collections import defaultdict
from pathlib import Path

_ENV_DIR = "HF_EXT_TRANSFORMERS_TESTS"
_ENV_MODELS = "HF_EXT_CONFORMANCE_MODELS"
_PACKAGE = "transformers_common_tests"  # the import name given to the user's tests folder (avoids clashing with ours)
_REQUIRED_FILES = ("__init__.py", "test_modeling_common.py", "causal_lm_tester.py", "generation/test_utils.py")
TESTERS = {
    "fog": "FogModelTest",
    "fog-recipe": "FogRecipeModelTest",
    "lp-merged": "LPMergedTest",
    "lp-unmerged": "LPUnmergedTest",
    "lp-block": "LPBlockTest",
    "lp-qwen2": "LPQwen2Test",
    "lp-mistral": "LPMistralTest",
    "grok": "GrokDecoderTest",
    "llama-control": "LlamaControlTest",
}


def check_tests_dir(path: str | os.PathLike) -> Path:
    """Return `path` as a resolved folder holding transformers' common test files, or raise `ValueError`."""
    tests_dir = Path(path).expanduser().resolve()
    if not tests_dir.is_dir():
        raise ValueError(
            f"--transformers-tests {path!s}: no such folder. Pass the `tests` folder of a transformers source checkout "
            "(git clone https://github.com/huggingface/transformers, then check out the tag of the installed version)."
        )
    missing = [name for name in _REQUIRED_FILES if not (tests_dir / name).is_file()]
    if missing:
        raise ValueError(
            f"--transformers-tests {path!s} lacks {', '.join(missing)}; pass the `tests` folder of a transformers "
            "source checkout (the PyPI sdist lacks causal_lm_tester.py and generation/test_utils.py)."
        )
    if not (tests_dir.parent / "src" / "transformers" / "__init__.py").is_file():
        raise ValueError(
            f"--transformers-tests {path!s} is not inside a transformers source checkout: its pipeline tester reads "
            f"{tests_dir.parent / 'src' / 'transformers'}; pass the `tests` folder of the checkout itself."
        )
    return tests_dir


def checkout_version(tests_dir: Path) -> str | None:
    """The `__version__` of the transformers checkout that holds `tests_dir`, if it can be read."""
    init = tests_dir.parent / "src" / "transformers" / "__init__.py"
    if not init.is_file():
        return None
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', init.read_text(encoding="utf-8"), flags=re.M)
    return match.group(1) if match else None


def _load_tests_package(tests_dir: Path):
    """Import the user's tests folder as package `_PACKAGE` (its modules import each other relatively)."""
    if _PACKAGE in sys.modules:
        return sys.modules[_PACKAGE]
    spec = importlib.util.spec_from_file_location(
        _PACKAGE, tests_dir / "__init__.py", submodule_search_locations=[str(tests_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = module
    spec.loader.exec_module(module)
    return module


# transformers' training / tensor-parallel / FSDP2 testers (tests/test_*_mixin.py, module: class, allowlist global).
# A causal-LM tester of the matching version mixes them in itself; an older one gets them added here.
_PARALLEL_MIXINS = (
    ("test_training_mixin", "TrainingTesterMixin", None),
    ("test_tensor_parallel_mixin", "TensorParallelTesterMixin", "TP_DISTRIBUTED_TEST_MODEL_TYPES"),
    ("test_fsdp_mixin", "FSDPTesterMixin", "FSDP_DISTRIBUTED_TEST_MODEL_TYPES"),
)
# The mixins run their distributed tests only for model types on an allowlist (a set in their module); ours join it.
_OUR_MODEL_TYPES = ("fog", "layer_parallel", "llama")


def _with_parallel_mixins(base_test: type, tests_dir: Path) -> type:
    """`base_test` plus those of transformers' training / TP / FSDP2 mixins the checkout has and it lacks."""
    added = []
    for module_name, class_name, allowlist in _PARALLEL_MIXINS:
        if not (tests_dir / f"{module_name}.py").is_file():  # the checkout predates this mixin
            continue
        try:
            module = importlib.import_module(f"{_PACKAGE}.{module_name}")
        except ImportError as err:
            raise ValueError(
                f"{tests_dir / module_name}.py does not import ({err}); the distributed mixins also need the "
                "checkout's tests/distributed_testing_utils.py. Pass the `tests` folder of a full source checkout."
            ) from err
        mixin = getattr(module, class_name)
        allowed = getattr(module, allowlist, None) if allowlist else None
        if isinstance(allowed, set):
            allowed.update(_OUR_MODEL_TYPES)
        if not issubclass(base_test, mixin):
            added.append(mixin)
    if not added:
        return base_test
    # The mixins declare `model_tester` as an abstract property; the causal-LM test assigns it in `setUp`.
    return type(base_test.__name__, (base_test, *added), {"model_tester": None, "__module__": __name__})


def define_testers(tests_dir: Path, selected: list[str]) -> dict[str, type]:
    """Build the `unittest.TestCase` classes for the selected testers from the user's transformers test files."""
    _load_tests_package(tests_dir)
    # The pipeline tester imports its per-task tests by dotted path (`tests.pipelines....`) from the checkout root.
    if str(tests_dir.parent) not in sys.path:
        sys.path.append(str(tests_dir.parent))
    causal_lm_tester = importlib.import_module(f"{_PACKAGE}.causal_lm_tester")
    configuration_common = importlib.import_module(f"{_PACKAGE}.test_configuration_common")
    base_test, base_tester = causal_lm_tester.CausalLMModelTest, causal_lm_tester.CausalLMModelTester
    base_test = _with_parallel_mixins(base_test, tests_dir)

    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, MistralConfig, Qwen2Config
    from transformers.models.auto import modeling_auto

    from hf_ext.models.fog import FogConfig, FogForCausalLM, FogModel
    from hf_ext.models.layer_parallel import LayerParallelConfig
    from hf_ext.models.layer_parallel.modeling_layer_parallel import LayerParallelForCausalLM, LayerParallelModel

    # The common tests look model types up in transformers' auto-mapping name tables (e.g. to know that a base model
    # returns no loss); register ours there as a model living inside transformers would be.
    modeling_auto.MODEL_MAPPING_NAMES.setdefault("fog", "FogModel")
    modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault("fog", "FogForCausalLM")
    modeling_auto.MODEL_MAPPING_NAMES.setdefault("layer_parallel", "LayerParallelModel")
    modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault("layer_parallel", "LayerParallelForCausalLM")

    class FogModelTester(base_tester):
        config_class, base_model_class, causal_lm_class = FogConfig, FogModel, FogForCausalLM

    # transformers runs `test_can_init_all_missing_weights` (every weight and buffer re-initialised by
    # `_init_weights` as `__init__` makes it) only when the config class's file has a "# Copyright <year>" header of
    # 2023 or later, or with this opt-in; ours have no such header, so without it the check was skipped as "Not a
    # prioritized model for now" (set on the FOG and layer-parallel test classes).

    class FogModelTest(base_test, unittest.TestCase):
        model_tester_class = FogModelTester
        pipeline_model_mapping = {"feature-extraction": FogModel, "text-generation": FogForCausalLM}
        test_can_init_all_missing_weights_before_2023 = True

    class FogRecipeModelTester(FogModelTester):
        def get_config(self):
            return FogConfig.fog(
                vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
                intermediate_size=self.intermediate_size, max_position_embeddings=self.max_position_embeddings,
                pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
            )  # fmt: skip

    class FogRecipeModelTest(FogModelTest):
        model_tester_class = FogRecipeModelTester

    class LPMergedTester(base_tester):
        config_class, base_model_class, causal_lm_class = (
            LayerParallelConfig,
            LayerParallelModel,
            LayerParallelForCausalLM,
        )
        lp_mode, lp_merged = "sublayer", True
        source_config_class = LlamaConfig
        # Merged: 3 source layers with (1, 2) paired -> 2 cache slots; the common attention test reads the head count
        # of attentions[0], so the wide merged slot is not the first. Unmerged: (0, 1) of 2 layers -> 2 slots.
        source_layers, pairs = 3, [[1, 2]]

        def __init__(self, parent, **kwargs):
            super().__init__(parent, **kwargs)
            if not self.lp_merged:
                self.source_layers, self.pairs = 2, [[0, 1]]
            # The tests expect one hidden state (+1) and one attention map per cache slot.
            self.num_hidden_layers = self.source_layers - (len(self.pairs) if self.lp_merged else 0)

        def get_config(self):
            source = self.source_config_class(
                vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.source_layers,
                num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
                intermediate_size=self.intermediate_size, hidden_act=self.hidden_act,
                max_position_embeddings=self.max_position_embeddings, initializer_range=self.initializer_range,
                pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
            )  # fmt: skip
            return LayerParallelConfig(
                source_config=source, lp_pairs=self.pairs, lp_mode=self.lp_mode, lp_merged=self.lp_merged
            )

    class LPMergedTest(base_test, unittest.TestCase):
        model_tester_class = LPMergedTester
        test_can_init_all_missing_weights_before_2023 = True
        pipeline_model_mapping = {
            "feature-extraction": LayerParallelModel,
            "text-generation": LayerParallelForCausalLM,
        }

        def setUp(self):
            super().setUp()
            # A layer-parallel config cannot be built without its source config (by design), so the config tester
            # gets the source config and pairs, as composite models pass their sub-configs.
            saved = json.loads(self.model_tester.get_config().to_json_string())
            inputs = {k: saved[k] for k in ("source_config", "lp_pairs", "lp_mode", "lp_merged")}
            self.config_tester = configuration_common.ConfigTester(self, config_class=LayerParallelConfig, **inputs)

        def test_config(self):
            self.config_tester.run_common_tests(can_init_without_params=False)

    class LPUnmergedTester(LPMergedTester):
        lp_merged = False

    class LPUnmergedTest(LPMergedTest):
        model_tester_class = LPUnmergedTester

    class LPBlockTester(LPMergedTester):
        lp_mode = "block"

    class LPBlockTest(LPMergedTest):
        model_tester_class = LPBlockTester

    class LPQwen2Tester(LPMergedTester):
        source_config_class = Qwen2Config  # q/k/v biases

    class LPQwen2Test(LPMergedTest):
        model_tester_class = LPQwen2Tester

    class LPMistralTester(LPMergedTester):
        source_config_class = MistralConfig

    class LPMistralTest(LPMergedTest):
        model_tester_class = LPMistralTester

    from hf_ext.neuralgrok import GrokDecoderConfig, GrokDecoderForCausalLM

    modeling_common = importlib.import_module(f"{_PACKAGE}.test_modeling_common")
    generation_utils = importlib.import_module(f"{_PACKAGE}.generation.test_utils")

    class GrokDecoderTester:
        """The inputs and config the two mixins ask a model tester for (`prepare_config_and_inputs_for_common`)."""

        def __init__(self, parent, batch_size=13, seq_length=7):
            self.parent, self.batch_size, self.seq_length = parent, batch_size, seq_length
            self.is_training = True
            self.vocab_size, self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 99, 32, 2, 4
            self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

        def get_config(self):
            return GrokDecoderConfig(
                vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                num_attention_heads=self.num_attention_heads, max_position_embeddings=64,
                pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
            )  # fmt: skip

        def prepare_config_and_inputs_for_common(self):
            # prompts without the special tokens (as transformers' testers make them)
            input_ids = modeling_common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(min=3)
            import torch

            return self.get_config(), {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    class GrokDecoderTest(modeling_common.ModelTesterMixin, generation_utils.GenerationTesterMixin, unittest.TestCase):
        all_model_classes = (GrokDecoderForCausalLM,)
        all_generative_model_classes = (GrokDecoderForCausalLM,)
        pipeline_model_mapping = {}
        test_pruning = False
        test_head_masking = False
        _is_stateful = False

        def setUp(self):
            self.model_tester = GrokDecoderTester(self)
            self.config_tester = configuration_common.ConfigTester(
                self, config_class=GrokDecoderConfig, hidden_size=32, num_attention_heads=4
            )

        def test_config(self):
            self.config_tester.run_common_tests()

        def test_can_init_all_missing_weights(self):
            """transformers' check, with one seed per model instead of one per module. transformers reseeds before
            each module's `_init_weights`, which this model's constructor does not call (its modules keep the PyTorch
            initialisation they drew, so that a seed gives the reproductions' weights); the `_init_weights` that
            `from_pretrained` runs on a checkpoint's missing weights must then give every weight exactly what the
            constructor gives for the same seed: the same draws in the same order."""
            import copy

            import torch

            config, _ = self.model_tester.prepare_config_and_inputs_for_common()
            for tie in (False, True):
                config.tie_word_embeddings = tie
                torch.manual_seed(0)
                built = GrokDecoderForCausalLM(copy.deepcopy(config)).state_dict()
                torch.manual_seed(0)
                loaded = GrokDecoderForCausalLM.from_pretrained(None, config=copy.deepcopy(config), state_dict={})
                on_meta = [name for name, t in [*loaded.named_parameters(), *loaded.named_buffers()] if t.is_meta]
                self.assertEqual(on_meta, [], f"still on the meta device (tie_word_embeddings={tie})")
                loaded = loaded.state_dict()
                self.assertEqual(sorted(loaded), sorted(built))
                differ = [name for name, value in built.items() if not torch.equal(value, loaded[name])]
                self.assertEqual(
                    differ, [], f"`_init_weights` differs from the constructor (tie_word_embeddings={tie})"
                )

        @unittest.skip("GrokDecoderForCausalLM has no separate base model: the head sits on the blocks")
        def test_model_base_model_prefix(self):
            pass

        @unittest.skip(
            "the attention maps come from nn.MultiheadAttention, which returns a new tensor after they were used: for "
            "inspection, they carry no gradient to retain"
        )
        def test_retain_grad_hidden_states_attentions(self):
            pass

    class LlamaControlTester(base_tester):
        config_class, base_model_class, causal_lm_class = LlamaConfig, LlamaModel, LlamaForCausalLM

    class LlamaControlTest(base_test, unittest.TestCase):
        model_tester_class = LlamaControlTester
        pipeline_model_mapping = {"feature-extraction": LlamaModel, "text-generation": LlamaForCausalLM}

    defined = locals()
    return {TESTERS[name]: defined[TESTERS[name]] for name in selected}


class _CountPerTester:
    """pytest plugin: one outcome per test (passed / failed / skipped) per test class, and the failing ids.

    A test whose subtests were all skipped (e.g. a check that loops over model classes and skips each) counts as
    skipped, as in pytest's JUnit XML; pytest's terminal summary counts it as passed.
    """

    def __init__(self):
        self.outcomes = {}  # nodeid -> "passed" / "failed" / "skipped"
        self.subtests = defaultdict(list)  # nodeid -> outcomes of its subtests

    def pytest_runtest_logreport(self, report):
        if hasattr(report, "context"):  # a subtest's report (pytest >= 9)
            self.subtests[report.nodeid].append(report.outcome)
            return
        outcome = report.outcome if report.outcome in ("passed", "skipped") else "failed"
        if report.when == "call" or (report.when == "setup" and outcome != "passed"):
            self.outcomes[report.nodeid] = outcome
        elif report.when == "teardown" and outcome == "failed":
            self.outcomes[report.nodeid] = "failed"

    def summary(self) -> tuple[dict[str, dict[str, int]], list[str], list[str]]:
        """Counts per tester, then the failing and the skipped test ids (`Tester::test`)."""
        counts = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0})
        failed, skipped = [], []
        for nodeid, outcome in self.outcomes.items():
            subtests = self.subtests.get(nodeid, [])
            if outcome == "passed" and "failed" in subtests:
                outcome = "failed"
            elif outcome == "passed" and subtests and all(sub == "skipped" for sub in subtests):
                outcome = "skipped"
            parts = nodeid.split("::")
            counts[parts[1] if len(parts) > 2 else parts[0]][outcome] += 1
            if outcome != "passed":
                (failed if outcome == "failed" else skipped).append("::".join(parts[1:]))
        return {name: dict(c) for name, c in sorted(counts.items())}, failed, skipped


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run transformers' ModelTesterMixin, GenerationTesterMixin and causal-LM tester (from a "
        "transformers source checkout) against hf_ext's FOG and layer-parallel models.",
        epilog="Arguments after `--` go to pytest (e.g. -- -k generate -x).",
    )
    parser.add_argument(
        "--transformers-tests",
        required=True,
        metavar="DIR",
        help="the `tests` folder of a transformers source checkout matching the installed transformers version",
    )
    parser.add_argument(
        "--models", nargs="+", choices=sorted(TESTERS), default=list(TESTERS), help="testers to run (default: all)"
    )
    parser.add_argument(
        "--report", type=Path, default=None, help="also write the counts, failures and skips as JSON here"
    )
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args and pytest_args[0] == "--":
        pytest_args = pytest_args[1:]
    try:
        tests_dir = check_tests_dir(args.transformers_tests)
    except ValueError as err:
        parser.error(str(err))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub when it is imported
    import pytest
    import transformers

    try:
        import parameterized  # noqa: F401  (transformers' testers import it)
    except ImportError:
        parser.error("transformers' common testers need `parameterized`: pip install parameterized")
    source_version = checkout_version(tests_dir)
    if source_version is not None and source_version != transformers.__version__:
        print(
            f"WARNING: the test files are from transformers {source_version}, the installed one is "
            f"{transformers.__version__}; failures may come from the version mismatch.",
            file=sys.stderr,
        )
    os.environ[_ENV_DIR] = str(tests_dir)
    os.environ[_ENV_MODELS] = ",".join(args.models)
    counter = _CountPerTester()
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n", encoding="utf-8")  # not this repository's settings (they filter warnings)
        status = pytest.main(
            [
                __file__,
                "-c",
                str(ini),
                "--rootdir",
                str(Path(__file__).parent),
                "-p",
                "no:cacheprovider",
                "-q",
                *pytest_args,
            ],
            plugins=[counter],
        )
    testers, failed, skipped = counter.summary()
    summary = {
        "transformers_installed": transformers.__version__,
        "transformers_tests": str(tests_dir),
        "transformers_tests_version": source_version,
        "testers": testers,
        "failed": failed,
        "skipped": skipped,  # to compare what each tester skips (e.g. against the Llama control)
    }
    print("\nper tester: passed / failed / skipped")
    for name, counts in summary["testers"].items():
        print(f"  {name:20s} {counts['passed']:4d} / {counts['failed']:3d} / {counts['skipped']:4d}")
    if args.report is not None:
        _write_json_atomic(args.report, summary)
    return int(status)


if os.environ.get(_ENV_DIR) and __name__ != "__main__":
    # Imported by pytest (from `main`): expose the selected testers for collection.
    globals().update(define_testers(Path(os.environ[_ENV_DIR]), os.environ[_ENV_MODELS].split(",")))

if __name__ == "__main__":
    sys.exit(main())
