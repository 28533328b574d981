"""The one way sinder makes a progress bar.

A bar redraws its line with ``\\r``; written to a log file or a pipe that is a screenful of
half-lines per image, so a bar is drawn only where a person watches: stderr is a terminal (or a
notebook). Callers that must stay silent (``--quiet``, ``--no-progress``, other ranks) pass
``enabled=False``; nothing here is global, each caller decides for its own bar.
"""

from __future__ import annotations

import sys


def interactive() -> bool:
    """Whether a person watches stderr: a terminal, or a Jupyter kernel (tqdm.auto draws a widget there)."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # a closed stream
        return False
    return "ipykernel" in sys.modules


def progress_bar(enabled: bool = True, **tqdm_kwargs):
    """A ``tqdm`` bar (``iterable=``, ``total=``, ``desc=``... as tqdm takes them), disabled unless
    ``enabled`` and stderr is interactive. A disabled bar still iterates, so callers need no branch."""
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled or not interactive(), **tqdm_kwargs)
