"""Protocol C of seed 001 (Fisher information geometry against the weight spectra): see ``runs``, ``analysis`` and ``findings``."""
