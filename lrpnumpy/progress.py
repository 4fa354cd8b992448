"""The progress bar long runs show (tqdm, on a terminal or when asked; nothing otherwise).

The bar counts ``unit``\\ s and shows the throughput (units per second) and the time left, as tqdm does
with a known total; ``initial`` units already done (a resumed run) count towards the total but not
the throughput.
"""

import sys


def bar(total, progress=None, unit="batch", initial=0, desc=None):
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
    return tqdm(total=total, unit=unit, leave=False, initial=initial, desc=desc,
                dynamic_ncols=True, smoothing=0.1,
                bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{rate_fmt}, {elapsed} done, "
                           "{remaining} left]")
