"""The dataset: manifests, verified downloads, IDX decoding, train/validation splits and the synthetic sample."""
