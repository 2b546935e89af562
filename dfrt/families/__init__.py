"""Model families, one folder each (``spec.py``, ``runtime.py``, ``export.py``); :mod:`dfrt.registry` finds
them by the name a bundle's manifest records."""
