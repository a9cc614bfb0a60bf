"""Protocol D of seed 001, rank evolution of every layer: see ``runs``, ``trajectories``, ``analysis`` and ``findings``."""
