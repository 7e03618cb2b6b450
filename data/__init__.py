"""Data stage: read cardiac MR datasets from disk, validate, preprocess for 2D training, split by patient."""
