"""What the ``papernotes video ...`` data commands do, given their parsed arguments.

Kept apart from :mod:`papernotes.cli` so that the CLI only maps names to these functions and tests can call
them directly. Each returns a JSON-serialisable summary.
"""

from __future__ import annotations

import argparse
from typing import Any

from papernotes.errors import ConfigError
from papernotes.video.flow import extract_flow_list
from papernotes.video.synthetic import make_synthetic


def make_synthetic_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes video make-synthetic``: write the embedded benchmark (videos, rawframes, list files)."""
    from papernotes.video.synthetic import CLASSES

    # --clips N: the total, spread evenly (rounded up) over the classes
    per_class = -(-args.clips // len(CLASSES)) if args.clips is not None else args.clips_per_class
    if per_class < 1:
        given = args.clips if args.clips is not None else args.clips_per_class
        raise ConfigError(f"--clips/--clips-per-class must be >= 1, got {given}")
    return make_synthetic(
        args.out,
        clips_per_class=per_class,
        seed=args.seed,
        size=args.size,
        num_frames=args.num_frames,
        write_rawframes=not args.no_rawframes,
        overwrite=args.overwrite,
        workers=args.workers,
    )


def flow_command(args: argparse.Namespace) -> dict[str, Any]:
    """``papernotes video flow``: TSN-style flow images for every video of an mmaction video list."""
    return extract_flow_list(
        args.list,
        args.out,
        root=args.root,
        workers=args.workers,
        method=args.method,
        bound=args.bound,
        max_frames=args.max_frames,
        write_rgb=args.rgb,
        on_error=args.on_error,
        progress=not args.no_progress,
    )
