"""Protocol B of seed 001, dense telemetry around grokking: see ``runs``, ``analysis`` (with ``early_warning`` and ``hypothesis_tests``) and ``findings``."""
