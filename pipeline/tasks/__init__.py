"""Tasks: one per model family (`pipeline.tasks.registry` finds it by the
model's name)."""
