"""fashion-mlops: reproducible, tracked CNN sweeps on Fashion-MNIST."""
