"""Layer-pairing retention: the share of the original model's task score a layer-paired model keeps."""

import datasets
import evaluate

from hf_ext.evaluation.scores import accuracy_retention

_CITATION = """\
@article{calvogonzalez2025truedepth,
  title={Leveraging the true depth of LLMs},
  author={Calvo Gonz{\\'a}lez, Ram{\\'o}n and Paliotta, Daniele and Pagliardini, Matteo and Jaggi, Martin and Fleuret, Fran{\\c{c}}ois},
  journal={Transactions on Machine Learning Research},
  year={2026},
  eprint={2502.02790},
  archivePrefix={arXiv}
}
"""

_DESCRIPTION = """\
Per-task retention `100 * paired / original` (or `100 * original / paired` for lower-is-better metrics such as
perplexity) of a layer-paired model (`predictions`) against its source model (`references`), with the mean and the
worst task. 100 means nothing lost; the paper reports 95-99% accuracy retained. Wraps
`hf_ext.evaluation.scores.accuracy_retention`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): score of the layer-paired model on each task.
    references (`list[float]`): score of the original model on the same tasks.
    tasks (`list[str]`): task names, one per score (each task once).
    lower_is_better (`list[str]`, optional): tasks whose metric decreases with quality.
Returns:
    mean_retention (`float`), min_retention (`float`), per_task (`dict[str, float]`), all in percent.
Examples:
    >>> import evaluate, hf_ext.evaluation as ev
    >>> ret = evaluate.load(ev.metric_path("layer_pairing_retention"))
    >>> ret.compute(predictions=[0.57, 0.76], references=[0.60, 0.80], tasks=["arc_easy", "piqa"])["mean_retention"]
    95.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LayerPairingRetention(evaluate.Metric):
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
            reference_urls=["https://arxiv.org/abs/2502.02790"],
        )

    def _compute(self, predictions, references, tasks, lower_is_better=()):
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must name each task once, got {sorted(tasks)}.")
        return accuracy_retention(
            dict(zip(tasks, references)), dict(zip(tasks, predictions)), lower_is_better=lower_is_better
        )
