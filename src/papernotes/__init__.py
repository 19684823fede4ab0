"""papernotes: paper notes on video understanding and efficient LLMs, made runnable.

Every method is implemented once, tested against an established library or the
paper's own math, benchmarked, and reachable from the ``papernotes`` CLI.
"""

__version__ = "0.1.0"
