"""Synthesis Part II on SST-2 (LoRA on a sequence classifier): see ``runs``, ``analysis`` and ``findings``."""
