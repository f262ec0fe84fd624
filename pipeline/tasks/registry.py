"""The task registry: a model's name → the task that trains it."""

from pipeline.tasks import base
from pipeline.tasks.baseline_cnn import BaselineCNNTask
from pipeline.tasks.capsnet import CapsNetTask
from pipeline.tasks.matrix_capsnet import MatrixCapsNetTask

TASKS = {'capsnet': CapsNetTask, 'matrix_capsnet': MatrixCapsNetTask,
         'baseline_cnn': BaselineCNNTask}


def get_task(config) -> base.Task:
  """The task of `config.model.name`.

  Raises:
    ValueError: when no task is registered for the model.
  """
  name = config.model.name
  if name not in TASKS:
    raise ValueError(f'No task for model {name!r}; known: {sorted(TASKS)}.')
  return TASKS[name](config)
