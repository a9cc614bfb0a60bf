"""The geometric Rosetta Stone: do its hyperparameter rules replace tuned ones? See ``runs``, ``analysis`` and ``findings``."""
