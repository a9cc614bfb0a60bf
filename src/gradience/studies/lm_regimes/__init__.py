"""The character-LM regimes (stable / marginal / unstable) shared by Protocols A and C."""
