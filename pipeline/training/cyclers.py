"""Iterate several sessions' train loaders together: one batch of every session per step."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = ["cycle", "LongCycler"]


def cycle(iterable: Iterable) -> Iterator:
    """Yield from ``iterable`` forever, calling ``iter()`` again each time it is exhausted.

    Unlike ``itertools.cycle`` nothing is cached: every pass is a fresh pass over the loader, so a
    shuffling loader draws a new order each time.
    """
    while True:
        empty = True
        for item in iterable:
            empty = False
            yield item
        if empty:
            raise ValueError("cannot cycle over an empty loader")


class LongCycler:
    """Round-robin over sessions until the longest loader is exhausted.

    Yields ``(data_key, batch)``: the first batch of every session (in the dict's key order), then
    the second batch of every session, and so on, ``max(len(loader))`` rounds in total; shorter
    loaders start a new pass when they run out. ``len(cycler) = n_sessions × max(len(loader))``.

    Args:
        loaders: ``{data_key: loader}``; every loader must have ``len()`` > 0.
    """

    def __init__(self, loaders: Mapping[str, Any]):
        if not isinstance(loaders, Mapping) or not loaders:
            raise ValueError("LongCycler needs a non-empty dict {data_key: loader}")
        lengths = {key: len(loader) for key, loader in loaders.items()}
        empty = [key for key, n in lengths.items() if n == 0]
        if empty:
            raise ValueError(f"train loaders of sessions {empty} have no batches")
        self.loaders = loaders
        self.max_batches = max(lengths.values())

    def __len__(self) -> int:
        return len(self.loaders) * self.max_batches

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        # iterators are created lazily (on first use), in key order, as in the peer library, so the
        # order in which shuffling loaders draw from their generators is the same
        iterators = {key: cycle(loader) for key, loader in self.loaders.items()}
        for _ in range(self.max_batches):
            for key, iterator in iterators.items():
                yield key, next(iterator)
