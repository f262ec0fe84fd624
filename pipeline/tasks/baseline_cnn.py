"""The baseline CNN's task: softmax cross-entropy on its logits (two-object
labels become half-and-half targets)."""

from pipeline import losses
from pipeline.tasks import base


class BaselineCNNTask(base.Task):
  """Softmax cross-entropy; no reconstruction."""

  def class_loss(self, labels, outputs, step):
    del step
    return losses.softmax_cross_entropy(labels, outputs['logits'])
