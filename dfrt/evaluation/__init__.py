"""``dfrt eval --dataset``: a bundle's accuracy on the user's own labelled videos, per frame strategy.

:func:`run_eval` (:mod:`dfrt.evaluation.run`) answers every (line, strategy) of a JSON Lines dataset into a
resumable output and summarises it (:mod:`dfrt.evaluation.report`); the dataset reader is
:mod:`dfrt.evaluation.dataset`, the prompts and answer matching :mod:`dfrt.evaluation.scoring`, the strategies
(the bundle's own selection, uniform frames at equal visual tokens, uniform frames filling the context)
:mod:`dfrt.evaluation.strategies`. Torch-free: it runs on the runtime alone (``pip install dfrt``).
"""

from __future__ import annotations

from dfrt.evaluation.report import EvalSummary
from dfrt.evaluation.run import EvalOptions, run_eval

__all__ = ["EvalOptions", "EvalSummary", "run_eval"]
