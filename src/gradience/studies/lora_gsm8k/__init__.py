"""Synthesis Part II on GSM8K (LoRA on a decoder LM): see ``runs``, ``analysis`` and ``findings``."""
