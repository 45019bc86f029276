"""Canary extraction rates: exact and approximate memorization of inserted canaries, per replication count."""

import datasets
import evaluate

from hf_ext.federated.memorization import score_continuation, summarize_records

_CITATION = """\
@article{bossy2025mitigating,
  title={Mitigating Unintended Memorization with LoRA in Federated Learning for LLMs},
  author={Bossy, Thierry and Vignoud, Julien and Rabbani, Tahseen and Troncoso-Pastoriza, Juan R. and Jaggi, Martin},
  journal={Transactions on Machine Learning Research},
  year={2026},
  eprint={2502.05087},
  archivePrefix={arXiv}
}
"""

_DESCRIPTION = """\
Scores greedy continuations of canary prefixes (`predictions`) against the true continuations (`references`) on
re-tokenized text truncated to `window` tokens: exact extraction (all `window` tokens match) and approximate
extraction (character-level BLEU >= `bleu_threshold`), as rates per prompt length and per replication count (how
often the canary was in the training data), with the mean and worst case over prompt lengths. Wraps
`hf_ext.federated.memorization.score_continuation` and `summarize_records`; `measure_memorization` runs the
generation and returns the same numbers.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated continuation per probe.
    references (`list[str]`): true continuation per probe.
    prefix_lengths (`list[int]`): prompt length (tokens) of each probe.
    replications (`list[int]`): how many times the probed canary was inserted in the training data.
    canary_ids (`list[str]`): id of the probed canary (several probes may share one).
    tokenizer: the model's tokenizer (an object with `__call__` and `decode`), required.
    window (`int`, defaults to 50): tokens compared (positive).
    bleu_threshold (`float`, defaults to 0.75): approximate-memorization threshold, in (0, 1].
Returns:
    exact_mean, approximate_mean, bleu_mean (`float`): over all probes (rates: mean over prompt lengths);
    exact_worst, approximate_worst (`float`): the largest rate over all (prompt length, replication count) cells;
    exact, approximate (`dict[int, float]`): rate per prompt length (a length without probes is absent);
    per_replication (`dict[int, dict]`): the same block per replication count.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CanaryExtraction(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "prefix_lengths": datasets.Value("int64"),
                    "replications": datasets.Value("int64"),
                    "canary_ids": datasets.Value("string"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2502.05087"],
        )

    def _compute(
        self,
        predictions,
        references,
        prefix_lengths,
        replications,
        canary_ids,
        tokenizer=None,
        window=50,
        bleu_threshold=0.75,
    ):
        if tokenizer is None or not callable(tokenizer) or not hasattr(tokenizer, "decode"):
            raise ValueError("tokenizer is required: pass tokenizer=<the model's tokenizer> to compute().")
        if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
            raise ValueError(f"window must be a positive number of tokens (the paper uses 50), got {window!r}.")
        if (
            isinstance(bleu_threshold, bool)
            or not isinstance(bleu_threshold, int | float)
            or not 0 < bleu_threshold <= 1
        ):
            raise ValueError(f"bleu_threshold must be in (0, 1] (the paper uses 0.75), got {bleu_threshold!r}.")
        records = []
        for gen, ref, length, rep, cid in zip(predictions, references, prefix_lengths, replications, canary_ids):
            rec = score_continuation(tokenizer, ref, gen, window, bleu_threshold)
            rec.update(canary_id=cid, replication=int(rep), prefix_length=int(length))
            records.append(rec)
        summary = summarize_records(records, sorted(set(int(x) for x in prefix_lengths)))
        return {**summary["overall"], "per_replication": summary["per_replication"]}
