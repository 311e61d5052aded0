"""``python -m benchmarks.expression_cost [--quick]``: what CEL evaluation costs, and whether the
cost model (:mod:`services.workflow.expression_cost`) bounds it.

Three tables, printed as markdown:

1. **Growth**: wall time of single operations run with the ``cel`` package directly, as a function
   of the input size n, with the measured exponent (time ~ n^k between the two largest sizes).
   This is where the super-linear operations show (k ~ 2).
2. **Model check**: expressions evaluated through the engine (prepare + run, budget lifted), the
   model's estimate in units, the measured time, and ``ns/unit``: the model is sound where this
   stays below ~1.
3. **Worst admitted**: for adversarial expression families, the largest input the budget admits and
   the measured time of evaluating it: the worst case a tenant can make one evaluation cost.

Times are the best of a few runs; the machine is shared, so expect noise (the load average is
printed).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import cel
import orjson

from services.workflow.expression_cost import BUDGET
from services.workflow.expressions import _EXTENSIONS, EvalContext, ExpressionError, compile_expression

Data = Callable[[int], dict[str, Any]]


def _ints(n: int) -> dict[str, Any]:
    return {"items": list(range(n))}


def _strs(n: int) -> dict[str, Any]:
    return {"strs": [f"s{i}" for i in range(n)]}


def _map(n: int) -> dict[str, Any]:
    return {"m": {f"k{i}": i for i in range(n)}}


def _csv(n: int) -> dict[str, Any]:
    return {"csv": ",".join(str(i) for i in range(n))}


def _nested(n: int) -> dict[str, Any]:
    return {"nested": [[i, i] for i in range(n)]}


def _big_sibling(n: int) -> dict[str, Any]:
    return {"x": 1, "items": list(range(n))}


def _orders(n: int) -> dict[str, Any]:
    return {"orders": [{"id": i, "items": [{"sku": f"s{j}", "q": j} for j in range(5)]} for i in range(n)]}


D = 'trigger["data"]'
#: (name, source for the cel package directly, data) — index syntax, as the engine runs it.
GROWTH: list[tuple[str, str, Data]] = [
    ("size", f"size({D}['items'])", _ints),
    ("all", f"{D}['items'].all(i, i >= 0)", _ints),
    ("exists (no hit)", f"{D}['items'].exists(i, i < 0)", _ints),
    ("exists_one", f"{D}['items'].exists_one(i, i == 0)", _ints),
    ("map", f"size({D}['items'].map(i, i)) >= 0", _ints),
    ("filter (all pass)", f"size({D}['items'].filter(i, i >= 0)) >= 0", _ints),
    ("filter (none pass)", f"size({D}['items'].filter(i, i < 0)) >= 0", _ints),
    ("map over a map", f"size({D}['m'].map(k, k)) >= 0", _map),
    ("all over a map", f"{D}['m'].all(k, k != '')", _map),
    ("nested all (n x n)", f"{D}['items'].all(x, {D}['items'].all(y, y >= 0))", _ints),
    ("x in list, per element", f"{D}['items'].all(x, x in {D}['items'])", _ints),
    ("in (list)", f"-1 in {D}['items']", _ints),
    ("== (lists)", f"{D}['items'] == {D}['items']", _ints),
    ("+ (lists)", f"size({D}['items'] + {D}['items']) >= 0", _ints),
    ("distinct (cel.stdlib)", f"size(stdlib_distinct({D}['items'])) >= 0", _ints),
    ("distinct (engine)", f"size({D}['items'].distinct()) >= 0", _ints),
    ("sort", f"size({D}['items'].sort()) >= 0", _ints),
    ("flatten", f"size({D}['nested'].flatten()) >= 0", _nested),
    ("join", f"size({D}['strs'].join(',')) >= 0", _strs),
    ("split", f"size({D}['csv'].split(',')) >= 0", _csv),
    ("string + string", f"size({D}['csv'] + {D}['csv']) >= 0", _csv),
    ("contains (string)", f"{D}['csv'].contains('x')", _csv),
    ("matches ('x$')", f"{D}['csv'].matches('x$')", _csv),
    ("matches per element", f"{D}['strs'].all(s, s.matches('^s[0-9]+$'))", _strs),
    ("lowerAscii", f"size({D}['csv'].lowerAscii()) >= 0", _csv),
    ("select a.b (big sibling)", "trigger.data.x == 1", _big_sibling),
    ("index a['b'] (big sibling)", f"{D}['x'] == 1", _big_sibling),
    ("select in a comprehension", f"{D}['items'].all(i, trigger.data.x == 1)", _big_sibling),
]

#: Engine expressions for the model check (source, data).
MODEL: list[tuple[str, Data]] = [
    ("trigger.data.items.all(i, i >= 0)", _ints),
    ("size(trigger.data.items.map(i, i * 2)) > 0", _ints),
    ("size(trigger.data.items.filter(i, i % 2 == 0)) >= 0", _ints),
    ("size(trigger.data.m.map(k, k)) >= 0", _map),
    ("trigger.data.items.all(x, trigger.data.items.exists(y, y == x))", _ints),
    ("trigger.data.orders.exists(o, o.items.exists(i, i.sku == 'none'))", _orders),
    ("trigger.data.orders.map(o, o.id)", _orders),
    ("trigger.data.orders.map(o, o.id + 0)", _orders),
    ("size(trigger.data.items.distinct()) >= 0", _ints),
    ("size(trigger.data.items.sort()) >= 0", _ints),
    ("size(trigger.data.nested.flatten()) >= 0", _nested),
    ("size(trigger.data.csv.split(',')) >= 0", _csv),
    ("trigger.data.strs.join(',').size() >= 0", _strs),
    ("trigger.data.csv.lowerAscii().size() >= 0", _csv),
    ("trigger.data.strs.all(s, s.matches('^s[0-9]+$'))", _strs),
    ("trigger.data.strs.all(s, s.matches('^[a-z]\\\\w+$'))", _strs),
    ("trigger.data", _orders),
    ("trigger.data.items + trigger.data.items == trigger.data.items", _ints),
]

#: Adversarial families for the worst-admitted search (source, data).
WORST: list[tuple[str, Data]] = [
    ("size(trigger.data.items.map(i, i)) > 0", _ints),
    ("size(trigger.data.items.map(i, i * 2)) > 0", _ints),
    ("size(trigger.data.m.map(k, k + '')) > 0", _map),
    ("trigger.data.orders.map(o, o.id)", _orders),
    ("size(trigger.data.items.filter(i, i >= 0)) > 0", _ints),
    ("trigger.data.items.all(x, trigger.data.items.all(y, y >= x || true))", _ints),
    ("trigger.data.items.all(x, x in trigger.data.items)", _ints),
    ("trigger.data.items.all(i, i >= 0)", _ints),
    ("trigger.data.m.all(k, trigger.data.m[k] >= 0)", _map),
    ("size(trigger.data.items.distinct()) > 0", _ints),
    ("size(trigger.data.items.sort()) > 0", _ints),
    ("size(trigger.data.csv.split(',')) > 0", _csv),
    ("trigger.data.csv.lowerAscii().size() > 0", _csv),
    ("trigger.data.strs.all(s, s.matches('^\\\\w+$'))", _strs),
    ("trigger.data.orders.map(o, o.items.map(i, i.sku))", _orders),
    ("trigger.data", _orders),
    ("trigger.data.items.map(i, [i, i, i]).flatten().size() > 0", _ints),
]


def _best(fn: Callable[[], object], repeat: int, cap_s: float) -> float:
    best = math.inf
    started = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - started > cap_s:
            break
    return best


def _cell(seconds: float) -> str:
    return f"{seconds * 1000:.3g}"


def growth(sizes: list[int], cap_s: float) -> None:
    from cel.stdlib import distinct as stdlib_distinct

    functions = dict(_EXTENSIONS) | {"stdlib_distinct": stdlib_distinct}
    print("### Growth: ms per evaluation (cel package directly)\n")
    print("| operation | " + " | ".join(f"n={n:,}" for n in sizes) + " | exponent |")
    print("|---" * (len(sizes) + 2) + "|")
    for name, source, data in GROWTH:
        program = cel.compile(source)
        times: list[float] = []
        for n in sizes:
            if times and times[-1] * (n / sizes[len(times) - 1]) ** 2 > cap_s * 4:
                break  # would take too long at this size
            context = cel.Context(variables={"trigger": {"data": data(n)}}, functions=functions)
            times.append(_best(functools.partial(program.execute, context), 3, cap_s))
        cells = [_cell(t) for t in times] + ["(skipped)"] * (len(sizes) - len(times))
        k = "-"
        if len(times) >= 2 and times[-2] > 2e-5:
            ratio = sizes[len(times) - 1] / sizes[len(times) - 2]
            k = f"{math.log(times[-1] / times[-2]) / math.log(ratio):.2f}"
        print(f"| {name} | " + " | ".join(cells) + f" | {k} |")
    print()


def _engine(source: str, data: dict[str, Any]) -> tuple[float, float, str]:
    compiled = _compile_unchecked(source)
    variables = EvalContext({"event": "e", "data": data}).variables()
    prepared = compiled.prepare(variables)
    outcome = "ok"

    def once() -> None:
        nonlocal outcome
        try:
            compiled.run(compiled.prepare(variables), budget=math.inf)
        except ExpressionError as exc:
            outcome = f"error: {exc.message[:40]}"

    return prepared.estimate.cost, _best(once, 3, 2.0), outcome


def _compile_unchecked(source: str) -> Any:
    """Compile ``source`` without the validation-time budget check (to measure what it refuses)."""
    from services.workflow import expression_cost

    saved = expression_cost.static_problems
    expression_cost.static_problems = lambda *a, **k: iter(())
    try:
        return compile_expression(source)
    finally:
        expression_cost.static_problems = saved


def model(sizes: list[int]) -> None:
    print("### Model check: estimate vs measured (engine path, budget lifted)\n")
    print("| expression | n | estimate (units) | measured ms | ns/unit |")
    print("|---|---|---|---|---|")
    for source, data in MODEL:
        for n in sizes:
            est, seconds, outcome = _engine(source, data(n))
            if seconds > 3.0:
                break
            ratio = seconds * 1e9 / est if est else 0.0
            note = "" if outcome == "ok" else f" ({outcome})"
            print(f"| `{source}` | {n:,} | {est:.3g} | {_cell(seconds)}{note} | {ratio:.2f} |")
    print()


#: The largest value an expression can read: a run's step outputs together (the default of
#: SWITCHYARD_MAX_RUN_OUTPUT_BYTES; a trigger is at most 256 KiB).
ACCEPTED_BYTES = 576 * 1024


def worst(max_n: int) -> float:
    print(
        f"### Worst admitted: largest input under the budget ({BUDGET:.2g} units) and at most "
        f"{ACCEPTED_BYTES // 1024} KiB of JSON (what the engine accepts), measured\n"
    )
    print("| expression | largest n admitted | estimate | measured ms |")
    print("|---|---|---|---|")
    worst_seconds = 0.0
    for source, data in WORST:
        compiled = _compile_unchecked(source)
        lo, hi = 0, max_n
        while lo < hi:  # largest n whose estimate fits the budget
            mid = (lo + hi + 1) // 2
            payload = data(mid)
            variables = EvalContext({"event": "e", "data": payload}).variables()
            fits = len(orjson.dumps(payload)) <= ACCEPTED_BYTES
            if fits and compiled.prepare(variables).estimate.cost <= BUDGET:
                lo = mid
            else:
                hi = mid - 1
        est, seconds, outcome = _engine(source, data(lo))
        worst_seconds = max(worst_seconds, seconds)
        note = "" if outcome == "ok" else f" ({outcome})"
        print(f"| `{source}` | {lo:,} | {est:.3g} | {_cell(seconds)}{note} |")
    print(f"\nWorst measured: {worst_seconds * 1000:.1f} ms\n")
    return worst_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke check)")
    parser.add_argument("--section", choices=["all", "growth", "model", "worst"], default="all")
    args = parser.parse_args()
    sizes = [100, 1000] if args.quick else [100, 1000, 4000, 10000]
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}, cpus: {os.cpu_count()}\n")
    if args.section in ("all", "growth"):
        growth(sizes, cap_s=1.0 if args.quick else 3.0)
    if args.section in ("all", "model"):
        model([100, 1000] if args.quick else [100, 1000, 10000])
    if args.section in ("all", "worst"):
        worst(2_000 if args.quick else 60_000)


if __name__ == "__main__":
    main()
