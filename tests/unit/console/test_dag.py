"""The layered DAG layout and its SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from services.console.dag import COLOURS, Node, layers, svg

DIAMOND = [Node("a", ()), Node("b", ("a",)), Node("c", ("a",)), Node("d", ("b", "c"))]


def test_each_step_sits_one_layer_after_its_deepest_dependency() -> None:
    assert layers(DIAMOND) == [["a"], ["b", "c"], ["d"]]
    assert layers([Node("x", ("y",)), Node("y", ())]) == [["y"], ["x"]]


def test_unknown_and_cyclic_needs_do_not_break_the_layout() -> None:
    assert layers([Node("a", ("ghost",)), Node("b", ("c",)), Node("c", ("b",))]) in (
        [["a", "c"], ["b"]],
        [["a", "b"], ["c"]],
    )


def test_svg_has_a_node_per_step_coloured_by_state_and_an_edge_per_need() -> None:
    doc = svg(DIAMOND, {"a": "succeeded", "b": "failed"})
    root = ET.fromstring(doc)
    ns = "{http://www.w3.org/2000/svg}"
    nodes = {g.get("data-step"): g for g in root.iter(f"{ns}g")}
    assert set(nodes) == {"a", "b", "c", "d"}
    assert nodes["a"].find(f"{ns}rect").get("fill") == COLOURS["succeeded"]  # type: ignore[union-attr]
    assert nodes["b"].get("data-state") == "failed"
    assert nodes["d"].get("data-state") == "unknown"
    assert len(list(root.iter(f"{ns}line"))) == 4


def test_step_ids_are_escaped() -> None:
    doc = svg([Node("<script>", ())], {})
    assert "<script>" not in doc.replace("<svg", "").split("</title>")[1]
    ET.fromstring(doc)
