"""Partitions of a task set: enumeration, counting and canonical form.

A partition of N tasks into groups is written as a tuple of groups, each a
sorted tuple of task indices, with the groups ordered by their smallest
member. This canonical form makes two descriptions of the same grouping
compare equal, whatever the order of groups or of tasks inside them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache

Partition = tuple[tuple[int, ...], ...]


@cache
def stirling2(n: int, k: int) -> int:
    """Stirling number of the second kind: partitions of n items into k groups.

    Example:
      >>> stirling2(6, 3)
      90
    """
    if n < 0 or k < 0:
        raise ValueError(f"n and k must be >= 0, got n={n}, k={k}.")
    if n == k:
        return 1
    if n == 0 or k == 0:
        return 0
    return k * stirling2(n - 1, k) + stirling2(n - 1, k - 1)


def bell(n: int) -> int:
    """Bell number: all partitions of n items.

    Example:
      >>> [bell(n) for n in range(8)]
      [1, 1, 2, 5, 15, 52, 203, 877]
    """
    return sum(stirling2(n, k) for k in range(n + 1))


def count_partitions(
    n: int, max_groups: int | None = None, exact: int | None = None
) -> int:
    """Number of partitions of n items into at most ``max_groups`` (or exactly
    ``exact``) non-empty groups."""
    if exact is not None:
        return stirling2(n, exact)
    top = n if max_groups is None else min(max_groups, n)
    return sum(stirling2(n, k) for k in range(1, top + 1))


def _restricted_growth(n: int, max_groups: int) -> Iterator[list[int]]:
    """Restricted growth strings a with a[0] = 0, a[i] <= 1 + max(a[:i])."""
    a = [0] * n

    def rec(i: int, top: int):
        if i == n:
            yield list(a)
            return
        for g in range(min(top + 2, max_groups)):
            a[i] = g
            yield from rec(i + 1, max(top, g))

    if n:
        yield from rec(1, 0)


def labels_to_partition(labels: Sequence[int]) -> Partition:
    """Canonical partition of a `[tasks]` group label vector.

    Example:
      >>> labels_to_partition([2, 0, 2, 1])
      ((0, 2), (1,), (3,))
    """
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(labels):
        groups.setdefault(int(g), []).append(i)
    return canonical(groups.values())


def canonical(groups) -> Partition:
    """Canonical form of groups of task indices (drops empty groups).

    Raises:
      ValueError: when a task appears in more than one group.
    """
    out = [tuple(sorted(int(i) for i in g)) for g in groups if len(g)]
    flat = [i for g in out for i in g]
    if len(flat) != len(set(flat)):
        raise ValueError(f"Groups {out} overlap; a partition needs disjoint groups.")
    return tuple(sorted(out))


def partitions(
    n: int, max_groups: int | None = None, *, exact: int | None = None
) -> list[Partition]:
    """Every partition of n tasks into non-empty groups, in canonical form.

    Args:
      n: number of tasks, >= 1.
      max_groups: keep partitions with at most this many groups (None: any).
      exact: keep partitions with exactly this many groups instead.

    Returns:
      A list of canonical partitions, with ``count_partitions`` entries; the
      order is deterministic (restricted growth strings in lexicographic
      order).

    Example:
      >>> partitions(3, 2)
      [((0, 1, 2),), ((0, 1), (2,)), ((0, 2), (1,)), ((0,), (1, 2))]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}.")
    if exact is not None:
        if not 1 <= exact <= n:
            raise ValueError(f"exact must be in [1, {n}], got {exact!r}.")
        top = exact
    else:
        top = n if max_groups is None else max_groups
        if top < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups!r}.")
    out = []
    for labels in _restricted_growth(n, min(top, n)):
        if exact is not None and max(labels) + 1 != exact:
            continue
        out.append(labels_to_partition(labels))
    return out


def partition_names(partition: Partition, names: Sequence[str]) -> list[list[str]]:
    """The groups of a partition as lists of task names."""
    return [[names[i] for i in g] for g in partition]


def partition_from_names(groups, names: Sequence[str]) -> Partition:
    """Canonical partition of groups given by task names.

    Raises:
      ValueError: for an unknown name or groups that do not cover every task.
    """
    index = {n: i for i, n in enumerate(names)}
    unknown = [t for g in groups for t in g if t not in index]
    if unknown:
        raise ValueError(f"Unknown task name(s) {unknown}; tasks are {list(names)}.")
    part = canonical([[index[t] for t in g] for g in groups])
    if sorted(i for g in part for i in g) != list(range(len(names))):
        raise ValueError(f"Groups {groups} do not cover every task of {list(names)}.")
    return part
