"""rv36 review of the pass-35 metadata changes."""

import json
import re

import pytest


def test_the_guidance_check_reads_the_documents_generation_conditions_on(tmp_path):
    """Guided generation conditions on the first held-out document (and, on the synthetic corpus, the first of each
    host); the md35 check took the longest prompt over every --max_eval_docs document, so a held-out document with a
    longer URL refused a --guidance_max_new_tokens the example fits (rv36 F3)."""
    from hf_ext.data import build_tokenizer
    from hf_ext.metadata import add_context_tokens
    from hf_ext.recipes.metadata_pretrain import _template, check_guidance_fits, load_documents

    from .test_md35_fixes import _recipe_args

    rows = [{"url": f"https://site{i}.org/a", "text": f"document {i} " * 20} for i in range(8)]
    val = [{"url": "https://a.org/", "text": "short url " * 20},
           {"url": "https://" + "long-host-name." * 12 + "org/" + "deep/path/" * 12, "text": "long url " * 20}]  # fmt: skip
    for name, data in (("train.jsonl", rows), ("val.jsonl", val)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    files = ["--dataset", "files", "--train_file", str(tmp_path / "train.jsonl"),
             "--validation_file", str(tmp_path / "val.jsonl"), "--max_metadata_tokens", "none"]  # fmt: skip
    model_args, data_args, meta_args, training_args = _recipe_args(
        tmp_path, *files, "--guidance_max_new_tokens", "1100"
    )
    tok = build_tokenizer(data_args.vocab_size)
    add_context_tokens(tok)
    _, eval_ds, vocab = load_documents(data_args, training_args.seed)
    assert vocab is None and eval_ds[0]["url"] == "https://a.org/" and len(eval_ds) == 2
    template = _template(meta_args)
    with pytest.raises(ValueError) as err:
        check_guidance_fits(model_args, data_args, meta_args, tok, template, eval_ds)
    largest = int(re.search(r"<= (\d+)", str(err.value)).group(1))
    prompt = int(re.search(r"longest prompt \((\d+) tokens", str(err.value)).group(1))
    assert largest + prompt == 1025 and prompt < 20  # the example's prompt (short URL), not the long URL's
    meta_args.guidance_max_new_tokens = largest
    check_guidance_fits(model_args, data_args, meta_args, tok, template, eval_ds)
