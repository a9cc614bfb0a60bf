"""Gradience: telemetry and protocols for the geometry of neural-network training."""

__version__ = "0.1.0"
