"""Measurements taken during training; metric names are defined once, in :mod:`.glossary`."""
