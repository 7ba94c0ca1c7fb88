"""Internalising the reasoning: COCONUT continuous thoughts (`coconut.py`) and iCoT stepwise
removal (`icot.py`); the stage loop that trains them is `stages/latent.py`."""
