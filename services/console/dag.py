"""A workflow's DAG drawn as SVG: a layered layout (pure, no layout library needed).

Each step goes to the layer after its deepest dependency; layers are columns, steps within a
layer are rows in definition order. Nodes are coloured by the state of the step in the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

COLOURS = {
    "succeeded": "#2e9d4f",
    "failed": "#d64545",
    "timed_out": "#d64545",
    "running": "#2f7ed8",
    "scheduled": "#2f7ed8",
    "retrying": "#b455c9",
    "pending": "#d9a21b",
    "cancelled": "#8a8f98",
    "skipped": "#b8bcc4",
}
UNKNOWN = "#e4e6ea"
NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 40, 60, 18, 10


@dataclass(frozen=True)
class Node:
    step_id: str
    needs: tuple[str, ...]


def layers(nodes: Sequence[Node]) -> list[list[str]]:
    """Steps grouped by depth (longest path from a root); unknown or cyclic needs are ignored."""
    by_id = {n.step_id: n for n in nodes}
    depth: dict[str, int] = {}

    def depth_of(step_id: str, seen: frozenset[str]) -> int:
        if step_id in depth:
            return depth[step_id]
        needs = [d for d in by_id[step_id].needs if d in by_id and d not in seen]
        value = 1 + max((depth_of(d, seen | {step_id}) for d in needs), default=-1)
        depth[step_id] = value
        return value

    out: list[list[str]] = []
    for node in nodes:
        d = depth_of(node.step_id, frozenset())
        while len(out) <= d:
            out.append([])
        out[d].append(node.step_id)
    return out


def svg(nodes: Sequence[Node], states: Mapping[str, str]) -> str:
    """The DAG as an inline SVG document; each node has ``data-step`` and ``data-state``."""
    grid = layers(nodes)
    pos: dict[str, tuple[int, int]] = {}
    for col, column in enumerate(grid):
        for row, step_id in enumerate(column):
            pos[step_id] = (PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
    width = PAD * 2 + max(len(grid), 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max((len(c) for c in grid), default=1) * (NODE_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="workflow DAG">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker></defs>',
    ]
    for node in nodes:
        x2, y2 = pos[node.step_id]
        for dep in node.needs:
            if dep in pos:
                x1, y1 = pos[dep]
                parts.append(
                    f'<line x1="{x1 + NODE_W}" y1="{y1 + NODE_H // 2}" x2="{x2}" y2="{y2 + NODE_H // 2}" '
                    'stroke="#666" stroke-width="1.5" marker-end="url(#arrow)"/>'
                )
    for node in nodes:
        x, y = pos[node.step_id]
        state = states.get(node.step_id, "")
        fill = COLOURS.get(state, UNKNOWN)
        text_fill = "#fff" if state in COLOURS and state not in ("skipped",) else "#222"
        label = node.step_id if len(node.step_id) <= 18 else node.step_id[:17] + "…"
        parts.append(
            f'<g class="node" data-step="{escape(node.step_id)}" data-state="{escape(state or "unknown")}">'
            f"<title>{escape(node.step_id)}: {escape(state or 'not started')}</title>"
            f'<rect x="{x}" y="{y}" rx="6" width="{NODE_W}" height="{NODE_H}" fill="{fill}" '
            'stroke="#333" stroke-width="1"/>'
            f'<text x="{x + NODE_W // 2}" y="{y + NODE_H // 2 + 5}" text-anchor="middle" '
            f'font-family="sans-serif" font-size="13" fill="{text_fill}">{escape(label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
