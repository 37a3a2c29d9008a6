"""How the project compiles its pixel and draw kernels: numba with the float flags spelled out.

A numba function that leaves `fastmath` or `error_model` unset inherits them from whichever jitted caller
compiles it first, and its on-disk cache then serves that version to every later caller, in any process.
FFCV compiles its pipeline with fastmath=True, under which comparisons with inf fold to constants and float
sums may be reordered: a kernel first compiled there would draw other magnitudes and write other pixels than
the same kernel called from the torchvision loader. Setting both flags on every kernel keeps one meaning
everywhere; only `inline="always"` helpers, which become part of their caller's code, may leave them unset.
The numpy error model is FFCV's: a division by zero gives inf or NaN instead of raising, in every loader.
"""

from __future__ import annotations

from numba import njit

EXACT_FLOATS = {"fastmath": False, "error_model": "numpy"}


def kernel(function=None, /, **options):
    """`@kernel` or `@kernel(nogil=True)`: numba's njit, cached on disk, with exact float semantics."""
    if set(options) & set(EXACT_FLOATS):
        raise TypeError(f"kernel() sets {', '.join(EXACT_FLOATS)} itself")
    decorate = njit(**{"cache": True, **options, **EXACT_FLOATS})
    return decorate if function is None else decorate(function)
