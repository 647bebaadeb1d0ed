"""``evaluate`` metric module: image-text retrieval recall (R@1/5/10 both ways and mR).

Load it offline with ``rsitr_hf.evaluation.load_retrieval_metric()`` (or ``evaluate.load`` on this
folder). Add one row of the similarity matrix per image::

    metric.add_batch(predictions=similarity_rows, references=image_ids)
    metric.compute(caption_image_ids=caption_image_ids)

``predictions`` are rows of the ``(num_images, num_captions)`` similarity matrix, ``references`` the
image id of each row, and ``caption_image_ids`` the image id of each column.
"""

import datasets
import evaluate

from rsitr_hf.evaluation.metrics import retrieval_metrics

_DESCRIPTION = __doc__
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    predictions: one row of similarities per image (list of floats, one per caption).
    references: the image id of each row.
    caption_image_ids: the image id of each caption (column), passed to compute().
Returns:
    i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10, mR: recalls in percent.
"""


class RsitrRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, caption_image_ids=None):
        if caption_image_ids is None:
            raise ValueError("pass caption_image_ids= (the image id of each similarity column) to compute()")
        return retrieval_metrics(predictions, caption_image_ids, image_ids=references)
