"""Training: model (encoder, heads, sharing), sampling, weighting, the DeepSpeed engine and worker,
evaluation, export and the MLflow registry. Imports `data_prep`, never `flows`."""
