"""Metadata conditioning: URL/topic/quality context prefixes kept out of the loss, cooldown, and guided generation."""

from .callbacks import MetadataCooldownCallback, MetadataTrainer
from .collator import MetadataCollator, keeps_metadata
from .encoding import CONTEXT_BEGIN, CONTEXT_END, MetadataEncoder, add_context_tokens
from .generation import build_guidance_inputs, generate_with_metadata_guidance
from .synthetic import synthetic_url_corpus
from .templates import InvalidMetadataError, MetadataTemplate, metadata_template, url_host, url_path

__all__ = [
    "CONTEXT_BEGIN",
    "CONTEXT_END",
    "InvalidMetadataError",
    "MetadataCollator",
    "MetadataCooldownCallback",
    "MetadataEncoder",
    "MetadataTemplate",
    "MetadataTrainer",
    "add_context_tokens",
    "build_guidance_inputs",
    "generate_with_metadata_guidance",
    "keeps_metadata",
    "metadata_template",
    "synthetic_url_corpus",
    "url_host",
    "url_path",
]
