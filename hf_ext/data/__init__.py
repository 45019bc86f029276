"""Embedded offline corpus, tokenizer builder, data loading and packing helpers shared by all recipes."""

from .corpus import corpus_domains, load_corpus
from .loading import hub_offline, load_text_datasets
from .packing import pack_dataset
from .tokenizer import build_tokenizer

__all__ = ["build_tokenizer", "corpus_domains", "hub_offline", "load_corpus", "load_text_datasets", "pack_dataset"]
