"""``evaluate`` metric module: image-text retrieval recall (R@1/5/10 both ways and mR).

Self-contained (this file and ``ranking.py`` beside it, numpy only), so ``evaluate.load`` works on this
folder, or on a Hub copy of it, without ``rsitr_hf`` installed; ``rsitr_hf.evaluation.load_retrieval_metric``
loads it offline. ``ranking.py`` is the ranking of ``rsitr_hf.evaluation.retrieval_metrics`` too. Add one row
of the similarity matrix per image::

    metric.add_batch(predictions=similarity_rows, references=image_ids)
    metric.compute(caption_image_ids=caption_image_ids)

``predictions`` are rows of the ``(num_images, num_captions)`` similarity matrix (kept in float64, so
near-equal scores do not become ties), ``references`` the image id of each row, and
``caption_image_ids`` the image id of each column. ``compute(..., ties=...)`` chooses how exact ties with
the correct item count: ``pessimistic`` (default: against the query), ``optimistic`` (for it) or
``reference`` (the field's released code: ``numpy.argsort(scores)[::-1]`` per query; the rows are float64
here, so for the papers' float32 matrices use ``rsitr_hf.evaluation.retrieval_metrics``).
"""

import datasets
import evaluate

from .ranking import recall_metrics, retrieval_ranks

_DESCRIPTION = __doc__
_CITATION = """\
@article{yuan2023parameter,
  title={Parameter-Efficient Transfer Learning for Remote Sensing Image-Text Retrieval},
  author={Yuan and Zhan and Xiong},
  journal={IEEE Transactions on Geoscience and Remote Sensing},
  year={2023},
  note={arXiv:2308.12509}
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: one row of similarities per image (list of floats, one per caption).
    references: the image id of each row.
    caption_image_ids: the image id of each caption (column), passed to compute().
    ties: "pessimistic" (default), "optimistic" or "reference", passed to compute().
Returns:
    i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, mR: recalls in percent. An item of another image
    scoring exactly as high as the correct one counts as ranked above it.
Examples:
    >>> metric = evaluate.load("rsitr_retrieval")
    >>> scores = [[0.9, 0.1], [0.2, 0.8]]
    >>> result = metric.compute(predictions=scores, references=[0, 1], caption_image_ids=[0, 1])
    >>> result["mR"], result["i2t_r1"]
    (100.0, 100.0)
"""


class RsitrRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2308.12509"],
        )

    def _compute(self, predictions, references, caption_image_ids=None, ties="pessimistic"):
        if caption_image_ids is None:
            raise ValueError("pass caption_image_ids= (the image id of each similarity column) to compute()")
        return recall_metrics(*retrieval_ranks(predictions, caption_image_ids, references, ties))
