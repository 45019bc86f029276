"""Mislabeled-data detection by influence scores: recall at inspected fractions and ROC-AUC."""

import datasets
import evaluate

from hf_ext.hyperinf.metrics import recall_at_fraction, roc_auc

_CITATION = """\
@article{zhou2024hyperinf,
  title={HyperINF: Unleashing the HyperPower of the Schulz's Method for Data Influence Estimation},
  author={Zhou, Xinyu and Fan, Simin and Jaggi, Martin},
  journal={arXiv preprint arXiv:2410.05090},
  year={2024}
}
"""

_DESCRIPTION = """\
How well influence scores (`predictions`, higher = more harmful) find mislabeled training examples (`references`,
1 = mislabeled): the share of all mislabeled examples found when inspecting the top `fraction` of the training set
by score (the paper's detection rate at 20% inspected), and the ROC-AUC (ties averaged). Wraps
`hf_ext.hyperinf.metrics.recall_at_fraction` and `roc_auc`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): influence score per training example (positive = harmful).
    references (`list[int]`): 1 if the example is mislabeled, else 0.
    fractions (`list[float]` or `float`, defaults to `[0.1, 0.2, 0.3]`): inspected shares of the training set.
Returns:
    roc_auc (`float`) and `recall@<fraction>` (`float`) for each fraction.
Examples:
    >>> import evaluate, hf_ext.evaluation as ev
    >>> det = evaluate.load(ev.metric_path("mislabeled_detection"))
    >>> det.compute(predictions=[0.9, 0.1, 0.8, 0.2, 0.3], references=[1, 0, 1, 0, 0], fractions=[0.4])
    {'roc_auc': 1.0, 'recall@0.4': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MislabeledDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2410.05090"],
        )

    def _compute(self, predictions, references, fractions=(0.1, 0.2, 0.3)):
        if any(r not in (0, 1) for r in references):
            raise ValueError("references must be 0 (clean) or 1 (mislabeled).")
        if isinstance(fractions, int | float) and not isinstance(fractions, bool):
            fractions = [fractions]  # one inspected share
        fractions = list(fractions)
        if any(isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1 for f in fractions):
            raise ValueError(f"fractions must be inspected shares in [0, 1], such as [0.1, 0.2], got {fractions!r}.")
        keys = [f"recall@{f:g}" for f in fractions]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"fractions {fractions!r} name the same recall@ key twice ({keys}); give each share once, and shares "
                "that differ in their first 6 significant digits."
            )
        out = {"roc_auc": roc_auc(predictions, references)}
        for f in fractions:
            out[f"recall@{f:g}"] = recall_at_fraction(predictions, references, float(f))
        return out
