"""Capsule models, the paper's baseline CNN, capsule ops and the registry
that builds a model by name (`pipeline.models.registry`)."""
