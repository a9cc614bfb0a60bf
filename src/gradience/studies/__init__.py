"""The studies: one package per protocol, split along its two DVC stages (see :mod:`.protocol`)."""
