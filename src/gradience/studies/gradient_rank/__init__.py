"""True-gradient effective rank over training and K-basis adaptation (paper 86): see ``runs``, ``analysis`` and ``findings``."""
