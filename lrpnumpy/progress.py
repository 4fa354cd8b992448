"""The progress bar long runs show (tqdm, on a terminal or when asked; nothing otherwise)."""

import sys


def bar(total, progress=None, unit="batch"):
    """A tqdm bar over ``total`` units, or None: ``progress`` None shows it only when standard error
    is a terminal, and without tqdm installed there is none."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, leave=False)
