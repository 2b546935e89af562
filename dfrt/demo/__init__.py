"""The demo world and what ships with it: synthetic clips (`world`), sample videos (`samples`) and the
accuracy evaluation behind `dfrt eval` (`evaluate`). Training lives in `dfrt.demo.training` (torch).

Importing this package is cheap (the CLI's parser reads :data:`STRATEGIES`).
"""

STRATEGIES = ("dynfocus", "uniform", "random")  # frame selection strategies `dfrt eval` compares
