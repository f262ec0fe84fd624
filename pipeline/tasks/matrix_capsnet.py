"""Matrix capsules' task: the spread loss of Hinton et al. 2018, its margin
annealed from 0.2 to 0.9 over `--spread_anneal_steps`."""

from pipeline import losses
from pipeline.tasks import base


class MatrixCapsNetTask(base.Task):
  """Spread loss on the class capsules' activations."""

  def class_loss(self, labels, outputs, step):
    margin = losses.spread_margin(step, self.config.loss.spread_anneal_steps)
    return losses.spread_loss(labels, outputs['lengths'], margin)
