"""Keep transformers' progress bars and warnings off the user's stderr unless ``dfrt -v``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dfrt._optional import require
from dfrt.runtime.native_log import verbose


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers at error level with its progress bars off for the duration; restored afterwards."""
    if verbose():
        yield
        return
    hf_logging = require("transformers", "dfrt[export]").utils.logging
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
