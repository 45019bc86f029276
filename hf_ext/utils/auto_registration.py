"""Register custom model classes with transformers' Auto classes without importing them.

Importing any `PreTrainedModel` subclass pulls in `transformers.modeling_utils` (and through it torchao, torch.distributed
tensors and dynamo), which costs seconds. `import hf_ext` must stay fast, so configs are registered eagerly (they are
light) and model classes lazily: the Auto mapping holds a reference that is imported on first lookup.
"""

from __future__ import annotations

import importlib


class _LazyClassRef:
    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name

    def resolve(self):
        return getattr(importlib.import_module(self.module), self.name)

    def __repr__(self) -> str:
        return f"<lazy {self.module}.{self.name}>"


class _LazyClassDict(dict):
    """A dict whose `_LazyClassRef` values are imported on first access."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if isinstance(value, _LazyClassRef):
            value = value.resolve()
            super().__setitem__(key, value)
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    def values(self):
        return [self[k] for k in self]

    def items(self):
        return [(k, self[k]) for k in self]


def register_auto_model_lazily(config_class, module: str, classes: dict[str, str]) -> None:
    """Register model classes for `config_class` with Auto classes, importing them only when first looked up.

    Args:
        config_class (`type[PreTrainedConfig]`): The (already imported) config class.
        module (`str`): Dotted path of the module defining the model classes.
        classes (`dict[str, str]`): Auto class name (e.g. `"AutoModelForCausalLM"`) -> model class name.

    Falls back to eager `AutoClass.register` when the installed transformers has no lazy mapping to extend.
    """
    import transformers

    for auto_name, cls_name in classes.items():
        auto_cls = getattr(transformers, auto_name)
        mapping = getattr(auto_cls, "_model_mapping", None)
        extra = getattr(mapping, "_extra_content", None)
        if not isinstance(extra, dict):
            auto_cls.register(config_class, getattr(importlib.import_module(module), cls_name), exist_ok=True)
            continue
        if not isinstance(extra, _LazyClassDict):
            extra = _LazyClassDict(extra)
            mapping._extra_content = extra
        extra[config_class] = _LazyClassRef(module, cls_name)
    if "AutoModelForCausalLM" in classes:
        declare_causal_lm(config_class.model_type, classes["AutoModelForCausalLM"])


def declare_causal_lm(model_type: str, class_name: str) -> None:
    """List `class_name` among transformers' causal-LM model names (`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`), as its own
    causal LMs are.

    `AutoModelForCausalLM.register` does not do that, and transformers reads the list by class name: `Trainer` shifts
    the labels for label smoothing (`label_smoothing_factor`) only for a model on it (a model off it is trained to
    predict the current token instead of the next), and the text-generation pipeline accepts only models on it. Only
    the name is added: the Auto mapping joins the list with transformers' own config names, which never hold
    `model_type`, so its lookups keep resolving the registered class. An entry transformers already has is kept.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(model_type, class_name)
