"""Training the demo model (torch): the recipe, its LM, probes, and export into package data.

Not part of the runtime: needs ``pip install -e '.[export]'`` from a source checkout.
"""
