"""A TensorFlow 2 production training pipeline for Capsule Networks."""
