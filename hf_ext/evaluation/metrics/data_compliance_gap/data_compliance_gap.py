"""Data compliance gap (DCG): what a model loses when trained only on robots.txt-compliant data."""

import datasets
import evaluate

from hf_ext.compliance.dcg import compute_dcg

_CITATION = """\
@inproceedings{fan2025performant,
  title={Can Performant LLMs Be Ethical? Quantifying the Impact of Web Crawling Opt-Outs},
  author={Fan, Dongyang and Sabol{\\v{c}}ec, Vinko and Ansaripour, Matin and Tarun, Ayush Kumar and Jaggi, Martin
          and Bosselut, Antoine and Schlag, Imanol},
  booktitle={Conference on Language Modeling (COLM)},
  year={2025},
  eprint={2504.06219},
  archivePrefix={arXiv}
}
"""

_DESCRIPTION = """\
Per-task and mean data compliance gap between a model trained on all data (`references`) and one trained on the
robots.txt-compliant subset (`predictions`): `(full - compliant) / |full| * 100` (relative, default) or
`full - compliant`; the sign flips for lower-is-better tasks, so a positive gap always means compliance costs
performance. Wraps `hf_ext.compliance.compute_dcg`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): score of the compliant model on each task.
    references (`list[float]`): score of the non-compliant (full-data) model on the same tasks.
    tasks (`list[str]`): task names, one per score (each task once).
    relative (`bool`, defaults to `True`): percent gaps; `False` for absolute differences.
    lower_is_better (`list[str]`, optional): tasks whose metric decreases with quality (perplexity, loss).
Returns:
    dcg (`float`): mean gap over tasks.
    per_task (`dict[str, float]`): gap per task.
Examples:
    >>> import evaluate, hf_ext.evaluation as ev
    >>> dcg = evaluate.load(ev.metric_path("data_compliance_gap"))
    >>> round(dcg.compute(predictions=[0.50, 0.30], references=[0.52, 0.30], tasks=["arc_easy", "piqa"])["dcg"], 4)
    1.9231
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DataComplianceGap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("float64"),
                    "references": datasets.Value("float64"),
                    "tasks": datasets.Value("string"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2504.06219"],
        )

    def _compute(self, predictions, references, tasks, relative=True, lower_is_better=()):
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must name each task once, got {sorted(tasks)}.")
        report = compute_dcg(
            dict(zip(tasks, references)),
            dict(zip(tasks, predictions)),
            relative=relative,
            lower_is_better=lower_is_better,
        )
        return {"dcg": report.mean_gap, "per_task": {r["task"]: r["gap"] for r in report.rows}}
