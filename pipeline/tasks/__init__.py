"""Tasks: one per model family; `pipeline.models.registry` pairs each with
its model class and config."""
