"""Serving: the SavedModel's signatures, encoded-image headers, warm-up
records, versioned publishing, checkpoint restore and the TF Serving client."""
