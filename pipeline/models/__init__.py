"""Capsule models, the paper's baseline CNN, capsule ops and the registry
(`pipeline.models.registry`): a model's name to its model class, config and
task."""
