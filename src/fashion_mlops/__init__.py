"""Reproducible, tracked CNN sweeps on Fashion-MNIST: DVC pipeline, MLflow runs and registry, TensorBoard."""
