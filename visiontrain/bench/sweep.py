"""Benchmark points: fixed overrides crossed with a sweep (`key=a,b key2=c,d`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from visiontrain.infra.errors import UsageError


@dataclass(frozen=True)
class Point:
    overrides: tuple[str, ...]  # fixed overrides first, then this point's swept values
    swept: tuple[str, ...]  # the swept `key=value` items alone: the point's label

    @property
    def label(self) -> str:
        return " ".join(self.swept) or "default"


def parse_sweep(items: list[str]) -> list[tuple[str, list[str]]]:
    """['a.b=1,2', 'c.d=x'] -> [('a.b', ['1', '2']), ('c.d', ['x'])]."""
    axes: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",")]
        if not sep or not key or "" in choices:
            raise UsageError(f"--sweep item {item!r} is not of the form section.key=value1,value2,...")
        if key in (k for k, _ in axes):
            raise UsageError(f"--sweep names {key!r} twice; give its values once, comma-separated")
        axes.append((key, choices))
    return axes


def expand(fixed: list[str], sweep: list[str]) -> list[Point]:
    """The cartesian product of the sweep's values, in the order given (last key varies fastest)."""
    axes = parse_sweep(sweep)
    swept_keys = {key for key, _ in axes}
    clash = [item for item in fixed if item.partition("=")[0] in swept_keys]
    if clash:
        raise UsageError(f"override {clash[0]!r} is also swept; give it in --sweep only")
    points = []
    for values in itertools.product(*(choices for _, choices in axes)):
        swept = tuple(f"{key}={value}" for (key, _), value in zip(axes, values))
        points.append(Point(tuple(fixed) + swept, swept))
    return points
