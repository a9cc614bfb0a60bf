"""Protocol A of seed 001 (Hessian–weight co-evolution at the edge of stability): see ``runs``, ``analysis`` and ``findings``."""
