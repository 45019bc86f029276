"""NeuralGrok: a learned gradient amplifier trained by bilevel optimisation, Grokfast filters, and AGE/AWE metrics."""

from .amplifier import NeuralAmplifier, amplifier_outer_step
from .data import (
    ARITHMETIC_LAYOUTS,
    ARITHMETIC_TASKS,
    ArithmeticTask,
    arithmetic_vocab_size,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)
from .metrics import (
    absolute_entropy,
    absolute_gradient_entropy,
    absolute_weight_entropy,
    arithmetic_accuracy,
    preprocess_logits_for_accuracy,
    stability_after_target,
    steps_to_accuracy,
    weight_norm,
)
from .modeling import GrokDecoderConfig, GrokDecoderForCausalLM
from .optim import GradFilterOptimizer, GradientTransformOptimizer, GradNormOptimizer, NeuralGrokOptimizer
from .trainer import GrokkingCallback, NeuralGrokConfig, NeuralGrokTrainer

__all__ = [
    "ARITHMETIC_LAYOUTS",
    "ARITHMETIC_TASKS",
    "ArithmeticTask",
    "GradFilterOptimizer",
    "GradientTransformOptimizer",
    "GradNormOptimizer",
    "GrokDecoderConfig",
    "GrokDecoderForCausalLM",
    "GrokkingCallback",
    "NeuralAmplifier",
    "NeuralGrokConfig",
    "NeuralGrokOptimizer",
    "NeuralGrokTrainer",
    "absolute_entropy",
    "absolute_gradient_entropy",
    "absolute_weight_entropy",
    "amplifier_outer_step",
    "arithmetic_accuracy",
    "arithmetic_vocab_size",
    "build_arithmetic_dataset",
    "preprocess_logits_for_accuracy",
    "split_arithmetic_dataset",
    "stability_after_target",
    "steps_to_accuracy",
    "weight_norm",
]
