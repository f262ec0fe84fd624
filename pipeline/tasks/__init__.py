"""Tasks: one per model family, found by the model's name."""

from pipeline.tasks.base import METRIC_NAMES
from pipeline.tasks.base import Task
from pipeline.tasks.baseline_cnn import BaselineCNNTask
from pipeline.tasks.capsnet import CapsNetTask
from pipeline.tasks.matrix_capsnet import MatrixCapsNetTask

TASKS = {'capsnet': CapsNetTask, 'matrix_capsnet': MatrixCapsNetTask,
         'baseline_cnn': BaselineCNNTask}


def get_task(config) -> Task:
  """The task of `config.model.name`.

  Raises:
    ValueError: when no task is registered for the model.
  """
  name = config.model.name
  if name not in TASKS:
    raise ValueError(f'No task for model {name!r}; known: {sorted(TASKS)}.')
  return TASKS[name](config)
