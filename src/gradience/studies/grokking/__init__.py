"""Grokking on modular arithmetic (Parts I and V of the synthesis): see ``runs``, ``analysis`` and ``findings``."""
