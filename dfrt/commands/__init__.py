"""One module per ``dfrt`` verb: each has ``register(subparsers)``."""
