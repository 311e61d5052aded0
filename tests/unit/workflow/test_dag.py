"""Graph algorithms: topological order, roots/children/parents, cycle naming."""

from __future__ import annotations

import pytest

from services.workflow.dag import Dag, ancestors, find_cycles


def test_dag_queries() -> None:
    dag = Dag.from_needs({"a": [], "b": ["a"], "c": ["a"], "d": ["c", "b"], "e": []})
    assert dag.roots() == ("a", "e")
    assert dag.children("a") == ("b", "c")
    assert dag.parents("d") == ("c", "b")
    assert dag.topological_order() == ("a", "b", "c", "d", "e")
    assert dag.ancestors("d") == {"a", "b", "c"}
    assert dag.edge_count() == 4


def test_dag_refuses_cycles_and_unknown_needs() -> None:
    with pytest.raises(ValueError, match="cycle"):
        Dag.from_needs({"a": ["b"], "b": ["a"]})
    with pytest.raises(ValueError, match="unknown step 'z'"):
        Dag.from_needs({"a": ["z"]})


def test_find_cycles_names_each_cycle_from_its_first_declared_step() -> None:
    needs = {"x": [], "a": ["c"], "b": ["a"], "c": ["b"], "d": ["e"], "e": ["d", "x"]}
    assert find_cycles(list(needs), needs) == [["a", "c", "b", "a"], ["d", "e", "d"]]


def test_find_cycles_ignores_self_loops_and_unknown_needs() -> None:
    needs = {"a": ["a", "ghost"]}
    assert find_cycles(list(needs), needs) == []


def test_find_cycles_handles_long_chains_without_recursion() -> None:
    n = 5000
    needs = {f"s{i}": [f"s{i + 1}"] for i in range(n)}
    needs[f"s{n}"] = ["s0"]
    (cycle,) = find_cycles(list(needs), needs)
    assert len(cycle) == n + 2


def test_ancestors_tolerates_cycles() -> None:
    assert ancestors({"a": ["b"], "b": ["a"]}, "a") == {"a", "b"}
