"""CapsNet's task: the margin loss of Sabour et al. 2017 (Eq. 4)."""

from pipeline import losses
from pipeline.tasks import base


class CapsNetTask(base.Task):
  """Margin loss on the class-capsule lengths, plus the weighted
  reconstruction loss of the decoder."""

  def class_loss(self, labels, outputs, step):
    del step  # The margins are fixed.
    cfg = self.config
    return losses.margin_loss(labels, outputs['lengths'], cfg.loss.m_plus,
                              cfg.loss.m_minus, cfg.loss.down_weight)
