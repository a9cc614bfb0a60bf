"""The claim registry (registry.yaml): the seed claims the studies test."""
