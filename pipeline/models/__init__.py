"""Capsule models, the paper's baseline CNN, and the registry that builds
them by name."""

from pipeline.models.baseline_cnn import BaselineCNN
from pipeline.models.capsnet import CapsNet
from pipeline.models.matrix_capsnet import MatrixCapsNet
from pipeline.models.registry import MODELS
from pipeline.models.registry import build_from_spec
from pipeline.models.registry import build_model
