"""Seed 002, the lifecycle of the spectral edge (Dyck-1 and SCAN): see ``runs``, ``analysis`` and ``findings``."""
