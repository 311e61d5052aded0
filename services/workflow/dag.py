"""The step graph: ids and ``needs`` edges, with the graph algorithms the rest of the package uses.

Pure functions over step ids. An edge ``a -> b`` means "a needs b" (b runs first). The
:class:`Dag` type is only constructed from an acyclic graph whose needs are all known;
:func:`find_cycles` reports cycles for validation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def _strongly_connected(nodes: Sequence[str], needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit), in declaration order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = [t for t in needs.get(node, ()) if t in needs]
            if edge < len(targets):
                work.append((node, edge + 1))
                target = targets[edge]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def find_cycles(nodes: Sequence[str], needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one step, as ``[a, b, ..., a]``.

    Self-loops (a step needing itself) are not reported here; validation names them separately.
    Unknown needs are ignored.
    """
    position = {n: i for i, n in enumerate(nodes)}
    cycles: list[list[str]] = []
    for component in _strongly_connected(nodes, needs):
        if len(component) < 2:
            continue
        members = set(component)
        first = min(component, key=position.__getitem__)
        # walk inside the component from `first` until we return to a node already on the path
        path = [first]
        seen = {first: 0}
        node = first
        while True:
            node = next(t for t in needs[node] if t in members and t != node)
            if node in seen:
                loop = path[seen[node] :]
                start = loop.index(min(loop, key=position.__getitem__))
                cycle = [*loop[start:], *loop[:start], loop[start]]
                break
            seen[node] = len(path)
            path.append(node)
        cycles.append(cycle)
    cycles.sort(key=lambda c: position[min(c, key=position.__getitem__)])
    return cycles


def ancestors(needs: Mapping[str, Iterable[str]], step_id: str) -> frozenset[str]:
    """Every step that ``step_id`` transitively needs (unknown ids included as given, cycles allowed)."""
    seen: set[str] = set()
    todo = list(needs.get(step_id, ()))
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo.extend(needs.get(node, ()))
    return frozenset(seen)


@dataclass(frozen=True, slots=True)
class Dag:
    """An acyclic step graph. Build with :meth:`from_needs`; all queries are O(1) or O(size)."""

    order: tuple[str, ...]
    _parents: Mapping[str, tuple[str, ...]]
    _children: Mapping[str, tuple[str, ...]]
    _topological: tuple[str, ...]

    @classmethod
    def from_needs(cls, needs: Mapping[str, Sequence[str]]) -> Dag:
        """Build from ``{step_id: needs}`` in declaration order; ``ValueError`` if unknown or cyclic."""
        order = tuple(needs)
        parents = {n: tuple(dict.fromkeys(needs[n])) for n in order}
        for node, deps in parents.items():
            unknown = [d for d in deps if d not in parents]
            if unknown:
                raise ValueError(f"step {node!r} needs unknown step {unknown[0]!r}")
        children: dict[str, list[str]] = {n: [] for n in order}
        for node in order:
            for dep in parents[node]:
                children[dep].append(node)
        remaining = {n: len(parents[n]) for n in order}
        ready = [n for n in order if remaining[n] == 0]
        position = {n: i for i, n in enumerate(order)}
        topo: list[str] = []
        while ready:
            ready.sort(key=position.__getitem__, reverse=True)
            node = ready.pop()
            topo.append(node)
            for child in children[node]:
                remaining[child] -= 1
                if remaining[child] == 0:
                    ready.append(child)
        if len(topo) != len(order):
            raise ValueError("the needs of the steps form a cycle")
        return cls(order, parents, {n: tuple(c) for n, c in children.items()}, tuple(topo))

    def roots(self) -> tuple[str, ...]:
        """Steps with no needs, in declaration order."""
        return tuple(n for n in self.order if not self._parents[n])

    def parents(self, step_id: str) -> tuple[str, ...]:
        """The steps ``step_id`` needs."""
        return self._parents[step_id]

    def children(self, step_id: str) -> tuple[str, ...]:
        """The steps that need ``step_id``."""
        return self._children[step_id]

    def topological_order(self) -> tuple[str, ...]:
        """Every step after all of its needs; ties broken by declaration order (deterministic)."""
        return self._topological

    def ancestors(self, step_id: str) -> frozenset[str]:
        """Every step ``step_id`` transitively needs."""
        return ancestors(self._parents, step_id)

    def edge_count(self) -> int:
        """Number of distinct ``needs`` edges."""
        return sum(len(p) for p in self._parents.values())
