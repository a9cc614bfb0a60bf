"""Models built from params: MLPs, CNNs and decoder-only transformers."""
