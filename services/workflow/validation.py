"""Validation of a whole definition: shape (pydantic) plus every cross-field rule, all problems at once.

Rules owned here: size limits, unique step ids, known ``needs`` (no self-loops, no cycles, named
as ``a -> b -> a``), known actions (of action steps), expressions that compile (filters, ``when``,
templates and the CEL inside a step kind's spec, :data:`SPEC_EXPRESSION_FIELDS`, e.g.
``wait.until``), expression references to ``steps.<id>`` only where ``<id>`` is an ancestor of the
step, a `workflow:` step that calls its own workflow, and the ``context:`` block: at most
:data:`~services.workflow.models.MAX_CONTEXT_ENTRIES` entries, each a read action (a built-in
action that mutates is refused here; the executor refuses any other action that does not declare
``mutates = False``), inputs that read only ``trigger``, and ``context.<name>`` references only to
declared entries (never in the trigger filter, which runs before a run exists). The graph rules
also run when the pydantic shape check failed (on whatever ids and needs can be read), so one pass
reports them all.

On "unreachable steps": in an acyclic graph every step is reachable from a root (follow ``needs``
backwards until a step has none), so once cycles are rejected there is nothing left to check.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from services.workflow.actions import BUILTIN_ACTIONS, BUILTIN_READ_ACTIONS
from services.workflow.dag import Dag, ancestors, find_cycles
from services.workflow.expressions import (
    MATCH_VARIABLES,
    CompiledExpression,
    ExpressionError,
    compile_expression,
)
from services.workflow.models import (
    CONTEXT_STEP_PREFIX,
    MAX_CONTEXT_ENTRIES,
    ApprovalSpec,
    ContextEntry,
    RetryPolicy,
    Step,
    SubWorkflow,
    Trigger,
    WaitFor,
    WaitSpec,
    WorkflowDefinition,
)
from services.workflow.problems import DefinitionError, PathPart, Problem, format_path
from services.workflow.templates import CompiledInputs, compile_inputs

MAX_STEPS = 200
MAX_EDGES = 2000


@dataclass(slots=True)
class _StepView:
    """What the graph and expression rules need of a step, read leniently from raw data or a model."""

    index: int
    id: str | None
    action: str | None
    needs: list[tuple[int, str]]
    when: str | None
    inputs: Mapping[str, Any] | None
    inputs_at: tuple[str, ...] = ("inputs",)  # where the inputs are in the step (for problems)
    calls: str | None = None  # a `workflow:` step's child workflow name
    #: CEL expressions inside the step's kind spec, by field path (e.g. ``wait.until``).
    expressions: dict[str, str] = field(default_factory=dict)
    match: str | None = None  # wait_for.match


@dataclass(slots=True)
class _ContextView:
    """A ``context:`` entry, read leniently like :class:`_StepView`."""

    name: str
    action: str | None
    inputs: Mapping[str, Any] | None


@dataclass(slots=True)
class _View:
    steps: list[_StepView]
    trigger_filter: str | None
    context: list[_ContextView] = field(default_factory=list)


@dataclass(slots=True)
class CompiledParts:
    """Everything :func:`check_definition` compiled, for the ``CompiledWorkflow``."""

    dag: Dag | None = None
    trigger_filter: CompiledExpression | None = None
    when: dict[str, CompiledExpression] = field(default_factory=dict)
    inputs: dict[str, CompiledInputs] = field(default_factory=dict)
    #: Expressions of the kind specs, by step id and field path (``("pause", "wait.until")``).
    spec_expressions: dict[tuple[str, str], CompiledExpression] = field(default_factory=dict)
    match: dict[str, CompiledExpression] = field(default_factory=dict)  # wait_for.match by step id


#: The CEL fields of the step kind specs (bare CEL, not templates), as ``(kind field, field)``.
SPEC_EXPRESSION_FIELDS: tuple[tuple[str, str], ...] = (("wait", "until"),)


def _spec_expressions(step: Mapping[str, Any]) -> dict[str, str]:
    """The CEL sources of a step's kind specs (``step``: the step's fields, read leniently)."""
    found: dict[str, str] = {}
    for kind, name in SPEC_EXPRESSION_FIELDS:
        spec = step.get(kind)
        source = spec.get(name) if isinstance(spec, Mapping) else None
        if isinstance(source, str):
            found[f"{kind}.{name}"] = source
    return found


def _view_from_data(data: Mapping[str, Any]) -> _View:
    trigger = data.get("trigger")
    flt = trigger.get("filter") if isinstance(trigger, dict) else None
    raw_steps = data.get("steps")
    steps: list[_StepView] = []
    for i, raw in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        if not isinstance(raw, dict):
            continue
        needs = raw.get("needs")
        inputs = raw.get("inputs")
        child = raw.get("workflow")
        calls: str | None = None
        if isinstance(child, dict):
            inputs = child.get("inputs")
            calls = child["name"] if isinstance(child.get("name"), str) else None
        wait_for = raw.get("wait_for")
        match = wait_for.get("match") if isinstance(wait_for, dict) else None
        steps.append(
            _StepView(
                index=i,
                id=raw["id"] if isinstance(raw.get("id"), str) else None,
                action=raw["action"] if isinstance(raw.get("action"), str) else None,
                needs=[(k, n) for k, n in enumerate(needs) if isinstance(n, str)]
                if isinstance(needs, list)
                else [],
                when=raw["when"] if isinstance(raw.get("when"), str) else None,
                inputs=inputs if isinstance(inputs, dict) else None,
                inputs_at=("workflow", "inputs") if isinstance(child, dict) else ("inputs",),
                calls=calls,
                expressions=_spec_expressions(raw),
                match=match if isinstance(match, str) else None,
            )
        )
    raw_context = data.get("context")
    context = [
        _ContextView(
            str(name),
            raw["action"] if isinstance(raw.get("action"), str) else None,
            raw["inputs"] if isinstance(raw.get("inputs"), dict) else None,
        )
        for name, raw in (raw_context.items() if isinstance(raw_context, dict) else ())
        if isinstance(raw, dict)
    ]
    return _View(steps, flt if isinstance(flt, str) else None, context)


def _view_from_model(defn: WorkflowDefinition) -> _View:
    steps = [
        _StepView(
            i,
            s.id,
            s.action,
            list(enumerate(s.needs)),
            s.when,
            s.inputs if s.workflow is None else s.workflow.inputs,
            ("inputs",) if s.workflow is None else ("workflow", "inputs"),
            None if s.workflow is None else s.workflow.name,
            _spec_expressions({kind: _dumped(getattr(s, kind, None)) for kind, _ in SPEC_EXPRESSION_FIELDS}),
            match=s.wait_for.match if s.wait_for is not None else None,
        )
        for i, s in enumerate(defn.steps)
    ]
    context = [_ContextView(name, e.action, e.inputs) for name, e in defn.context.items()]
    return _View(steps, defn.trigger.filter, context)


def _dumped(spec: Any) -> Mapping[str, Any] | None:
    return spec.model_dump() if isinstance(spec, BaseModel) else None


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(loc: Sequence[PathPart]) -> type[BaseModel] | None:
    if len(loc) == 3 and loc[2] == "wait_for":
        return WaitFor
    # A shape part is a type (any key of it) or a field name (that key only).
    shapes: list[tuple[tuple[type | str, ...], type[BaseModel]]] = [
        ((), WorkflowDefinition),
        ((str,), Trigger),
        ((str, int), Step),
        ((str, int, "retry"), RetryPolicy),
        ((str, int, "wait"), WaitSpec),
        ((str, int, "approval"), ApprovalSpec),
    ]
    if len(loc) == 3 and loc[2] == "workflow":
        return SubWorkflow
    if len(loc) == 2 and loc[0] == "context":
        return ContextEntry
    for shape, model in shapes:
        if len(loc) == len(shape) and all(
            p == t if isinstance(t, str) else isinstance(p, t) for p, t in zip(loc, shape, strict=True)
        ):
            return model
    return None


def _pydantic_problems(exc: ValidationError, file: str) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = sorted(model.model_fields) if model else []
            msg = f"unknown field {loc[-1]!r}{_suggest(str(loc[-1]), allowed)}"
            if allowed:
                msg += f"; allowed fields: {', '.join(allowed)}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "string_pattern_mismatch":
            msg = f"{err['input']!r} does not match the pattern {err.get('ctx', {}).get('pattern')}"
        problems.append(Problem(file, format_path(loc), msg))
    return problems


def _graph_problems(view: _View, file: str) -> list[Problem]:
    problems: list[Problem] = []
    if len(view.steps) > MAX_STEPS:
        problems.append(
            Problem(file, "steps", f"{len(view.steps)} steps; the limit is {MAX_STEPS}. Split the workflow")
        )
    edges = sum(len({n for _, n in s.needs}) for s in view.steps)
    if edges > MAX_EDGES:
        problems.append(Problem(file, "steps", f"{edges} needs edges; the limit is {MAX_EDGES}"))
    first_at: dict[str, int] = {}
    for step in view.steps:
        if step.id is None:
            continue
        if step.id in first_at:
            problems.append(
                Problem(
                    file,
                    f"steps[{step.index}].id",
                    f"duplicate step id {step.id!r} (first used by steps[{first_at[step.id]}]); "
                    "step ids must be unique",
                )
            )
        else:
            first_at[step.id] = step.index
    for step in view.steps:
        seen: set[str] = set()
        for k, need in step.needs:
            where = f"steps[{step.index}].needs[{k}]"
            if need == step.id:
                problems.append(Problem(file, where, f"step {need!r} needs itself; remove it from needs"))
            elif need not in first_at:
                problems.append(
                    Problem(
                        file,
                        where,
                        f"needs unknown step {need!r}{_suggest(need, first_at)}; "
                        "every need must be the id of another step in this workflow",
                    )
                )
            elif need in seen:
                problems.append(Problem(file, where, f"{need!r} is listed twice in needs; remove one"))
            seen.add(need)
    problems.extend(_cycle_problems(view, first_at, file))
    return problems


def _needs_map(view: _View, first_at: Mapping[str, int]) -> dict[str, list[str]]:
    needs: dict[str, list[str]] = {}
    for step in view.steps:
        if step.id is not None and first_at.get(step.id) == step.index:
            needs[step.id] = [n for _, n in step.needs if n in first_at and n != step.id]
    return needs


def _cycle_problems(view: _View, first_at: Mapping[str, int], file: str) -> list[Problem]:
    needs = _needs_map(view, first_at)
    problems: list[Problem] = []
    by_id = {s.id: s for s in view.steps if s.id is not None and first_at.get(s.id) == s.index}
    for cycle in find_cycles(list(needs), needs):
        head = by_id[cycle[0]]
        k = next(k for k, n in head.needs if n == cycle[1])
        problems.append(
            Problem(
                file,
                f"steps[{head.index}].needs[{k}]",
                f"needs form a cycle: {' -> '.join(cycle)} (`x -> y` means x needs y); "
                "remove one of these needs",
            )
        )
    return problems


def _reference_problems(
    refs: Collection[str],
    step: _StepView,
    ancestry: Collection[str],
    known: Collection[str],
    where: str,
    file: str,
) -> list[Problem]:
    problems: list[Problem] = []
    for ref in sorted(refs):
        if ref == step.id:
            msg = f"references the output of its own step {ref!r}; a step can only read the steps it needs"
        elif ref not in known:
            msg = f"references unknown step {ref!r}{_suggest(ref, known)}"
        elif ref not in ancestry:
            msg = f"references step {ref!r} which is not an ancestor; add it to needs"
        else:
            continue
        problems.append(Problem(file, where, msg))
    return problems


def _expression_problems(
    view: _View, file: str, known_actions: Collection[str] | None, parts: CompiledParts
) -> list[Problem]:
    problems: list[Problem] = []
    if view.trigger_filter is not None:
        try:
            parts.trigger_filter = compile_expression(view.trigger_filter)
            if parts.trigger_filter.step_refs:
                problems.append(
                    Problem(
                        file,
                        "trigger.filter",
                        "the trigger filter runs before any step; it cannot use `steps`",
                    )
                )
            if parts.trigger_filter.context_refs:
                problems.append(
                    Problem(
                        file,
                        "trigger.filter",
                        "the trigger filter decides whether a run starts, before its context is read;"
                        " it cannot use `context`",
                    )
                )
        except ExpressionError as exc:
            problems.append(Problem(file, "trigger.filter", str(exc)))
    first_at: dict[str, int] = {}
    for s in view.steps:
        if s.id is not None:
            first_at.setdefault(s.id, s.index)
    needs = _needs_map(view, first_at)
    for step in view.steps:
        ancestry = ancestors(needs, step.id) if step.id is not None else frozenset()
        if known_actions is not None and step.action is not None and step.action not in known_actions:
            problems.append(
                Problem(
                    file,
                    f"steps[{step.index}].action",
                    f"unknown action {step.action!r}{_suggest(step.action, known_actions)}; "
                    f"known actions: {', '.join(sorted(known_actions))}",
                )
            )
        if step.when is not None:
            where = f"steps[{step.index}].when"
            try:
                expr = compile_expression(step.when)
                problems.extend(_reference_problems(expr.step_refs, step, ancestry, first_at, where, file))
                problems.extend(_context_reference_problems(expr.context_refs, view, where, file))
                if step.id is not None:
                    parts.when[step.id] = expr
            except ExpressionError as exc:
                problems.append(Problem(file, where, str(exc)))
        for path, source in step.expressions.items():
            where = f"steps[{step.index}].{path}"
            try:
                expr = compile_expression(source)
                problems.extend(_reference_problems(expr.step_refs, step, ancestry, first_at, where, file))
                problems.extend(_context_reference_problems(expr.context_refs, view, where, file))
                if step.id is not None:
                    parts.spec_expressions[(step.id, path)] = expr
            except ExpressionError as exc:
                problems.append(Problem(file, where, str(exc)))
        if step.match is not None:
            problems.extend(_match_problems(step, view, ancestry, first_at, file, parts))
        if step.inputs is not None:
            compiled, template_problems = compile_inputs(step.inputs)
            for tp in template_problems:
                problems.append(
                    Problem(
                        file, format_path(("steps", step.index, *step.inputs_at, *tp.path)), str(tp.error)
                    )
                )
            for key, value in step.inputs.items():
                sub, _ = compile_inputs({key: value})
                where = format_path(("steps", step.index, *step.inputs_at, key))
                problems.extend(_reference_problems(sub.step_refs, step, ancestry, first_at, where, file))
                problems.extend(_context_reference_problems(sub.context_refs, view, where, file))
            if step.id is not None:
                parts.inputs[step.id] = compiled
            if step.calls is not None and compiled.secret_refs:
                problems.append(
                    Problem(
                        file,
                        format_path(("steps", step.index, *step.inputs_at)),
                        "a child workflow's inputs cannot reference secrets "
                        f"({', '.join(sorted(compiled.secret_refs))}); reference them in the child's"
                        " own steps",
                    )
                )
    return problems


def _call_problems(view: _View, name: str | None, file: str) -> list[Problem]:
    """A workflow that calls itself directly would start runs of itself until the depth bound
    (and deadlock under a concurrency of 1): refused. Longer cycles (a calls b calls a) are not
    visible in one definition; the run-time depth bound ends them."""
    return [
        Problem(
            file,
            f"steps[{step.index}].workflow.name",
            f"workflow {name!r} calls itself; a sub-workflow must be another workflow",
        )
        for step in view.steps
        if name is not None and step.calls == name
    ]


def _context_reference_problems(refs: Collection[str], view: _View, where: str, file: str) -> list[Problem]:
    declared = [c.name for c in view.context]
    return [
        Problem(
            file,
            where,
            f"references unknown context entry {ref!r}{_suggest(ref, declared)}; "
            + (
                f"declared entries: {', '.join(declared)}"
                if declared
                else "declare it under `context:` at the top of the definition"
            ),
        )
        for ref in sorted(refs)
        if ref not in declared
    ]


def _context_problems(
    view: _View, file: str, known_actions: Collection[str] | None, parts: CompiledParts
) -> list[Problem]:
    """The ``context:`` block: bounded, read actions only, inputs over ``trigger`` only."""
    problems: list[Problem] = []
    if len(view.context) > MAX_CONTEXT_ENTRIES:
        problems.append(
            Problem(
                file,
                "context",
                f"{len(view.context)} context entries; the limit is {MAX_CONTEXT_ENTRIES}."
                " Read related records with one firm.query",
            )
        )
    reads = ", ".join(sorted(a for a in BUILTIN_READ_ACTIONS if a.startswith("firm.")))
    for entry in view.context:
        where = format_path(("context", entry.name))
        if entry.action in BUILTIN_ACTIONS and entry.action not in BUILTIN_READ_ACTIONS:
            problems.append(
                Problem(
                    file,
                    f"{where}.action",
                    f"{entry.action!r} is not a read action; context is read once at run start and kept"
                    f" for replays, so it may only read ({reads}, or an action that declares"
                    " mutates = False). Make it a step instead",
                )
            )
        elif known_actions is not None and entry.action is not None and entry.action not in known_actions:
            problems.append(
                Problem(
                    file,
                    f"{where}.action",
                    f"unknown action {entry.action!r}{_suggest(entry.action, known_actions)};"
                    f" the firm's read actions: {reads}",
                )
            )
        if entry.inputs is None:
            continue
        compiled, template_problems = compile_inputs(entry.inputs)
        for tp in template_problems:
            problems.append(
                Problem(file, format_path(("context", entry.name, "inputs", *tp.path)), str(tp.error))
            )
        if compiled.step_refs or compiled.context_refs:
            problems.append(
                Problem(
                    file,
                    f"{where}.inputs",
                    "context is read before any step, all entries at once: its inputs can use"
                    " `trigger` only, not `steps` or `context`",
                )
            )
        parts.inputs[CONTEXT_STEP_PREFIX + entry.name] = compiled
    return problems


def context_needs(defn: WorkflowDefinition) -> dict[str, list[str]]:
    """``{step_id: needs}`` of the run's whole graph: the hidden ``context.<name>`` steps first (no
    needs), then the author's steps, each root also needing every context step, so that no step
    starts before the whole context is read."""
    hidden = [CONTEXT_STEP_PREFIX + name for name in defn.context]
    needs: dict[str, list[str]] = {sid: [] for sid in hidden}
    for step in defn.steps:
        needs[step.id] = list(step.needs) if step.needs else list(hidden)
    return needs


def _match_problems(
    step: _StepView,
    view: _View,
    ancestry: Collection[str],
    known: Collection[str],
    file: str,
    parts: CompiledParts,
) -> list[Problem]:
    """A ``wait_for.match``: CEL over ``event``, ``trigger`` and the steps it needs, cost-checked
    like a ``when`` (it runs on the router's thread, once per waiting run per event)."""
    assert step.match is not None
    where = f"steps[{step.index}].wait_for.match"
    try:
        expr = compile_expression(step.match, MATCH_VARIABLES)
    except ExpressionError as exc:
        return [Problem(file, where, str(exc))]
    if step.id is not None:
        parts.match[step.id] = expr
    return [
        *_reference_problems(expr.step_refs, step, ancestry, known, where, file),
        *_context_reference_problems(expr.context_refs, view, where, file),
    ]


def _attach_lines(problems: Sequence[Problem], lines: Mapping[str, int] | None) -> list[Problem]:
    if not lines:
        return list(problems)
    out: list[Problem] = []
    for p in problems:
        line = p.line
        path = p.path
        while line is None and path:
            line = lines.get(path)
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ("$" if path != "$" else "")
        out.append(Problem(p.file, p.path, p.message, line))
    return out


def check_definition(
    defn: WorkflowDefinition, *, file: str = "<definition>", known_actions: Collection[str] | None = None
) -> tuple[list[Problem], CompiledParts]:
    """All cross-field problems of a shape-valid definition, and the compiled pieces (when none)."""
    view = _view_from_model(defn)
    parts = CompiledParts()
    problems = _graph_problems(view, file)
    problems.extend(_expression_problems(view, file, known_actions, parts))
    problems.extend(_call_problems(view, defn.name, file))
    problems.extend(_context_problems(view, file, known_actions, parts))
    if not problems:
        parts.dag = Dag.from_needs(context_needs(defn))
    return problems, parts


def validate_definition_data(
    data: Mapping[str, Any],
    *,
    file: str = "<definition>",
    known_actions: Collection[str] | None = None,
    lines: Mapping[str, int] | None = None,
    problems: Sequence[Problem] = (),
) -> WorkflowDefinition:
    """Validate parsed data as a definition; raise :class:`DefinitionError` with every problem.

    ``problems`` are earlier findings (e.g. duplicate keys from the loader) to report together;
    ``lines`` maps JSON paths to source lines so problems can name them.
    """
    found = list(problems)
    try:
        defn: WorkflowDefinition | None = WorkflowDefinition.model_validate(data)
    except ValidationError as exc:
        defn = None
        found.extend(_pydantic_problems(exc, file))
    if defn is not None:
        found.extend(check_definition(defn, file=file, known_actions=known_actions)[0])
    else:
        view = _view_from_data(data)
        found.extend(_graph_problems(view, file))
        found.extend(_expression_problems(view, file, known_actions, CompiledParts()))
        name = data.get("name")
        found.extend(_call_problems(view, name if isinstance(name, str) else None, file))
        found.extend(_context_problems(view, file, known_actions, CompiledParts()))
    if found:
        located = _attach_lines(found, lines)
        raise DefinitionError(sorted(located, key=lambda p: (p.line is None, p.line or 0)))
    assert defn is not None
    return defn


def step_timeout_problems(
    defn: WorkflowDefinition, max_step_timeout_s: float, *, file: str = "<definition>"
) -> list[Problem]:
    """Steps whose ``timeout`` exceeds what the runtime allows (``SWITCHYARD_MAX_STEP_TIMEOUT_S``):
    the language accepts up to a day, a deployment may allow less, and a step must never be cut
    short below the timeout it declares."""
    return [
        Problem(
            file,
            f"steps[{index}].timeout",
            f"timeout {step.timeout:g} s exceeds the runtime's limit of {max_step_timeout_s:g} s per"
            " attempt (SWITCHYARD_MAX_STEP_TIMEOUT_S); lower the timeout or raise the limit",
        )
        for index, step in enumerate(defn.steps)
        if step.timeout > max_step_timeout_s
    ] + [
        Problem(
            file,
            f"context.{name}.timeout",
            f"timeout {entry.timeout:g} s exceeds the runtime's limit of {max_step_timeout_s:g} s per"
            " attempt (SWITCHYARD_MAX_STEP_TIMEOUT_S); lower the timeout or raise the limit",
        )
        for name, entry in defn.context.items()
        if entry.timeout > max_step_timeout_s
    ]


def validate_definition(
    defn: WorkflowDefinition, *, file: str = "<definition>", known_actions: Collection[str] | None = None
) -> None:
    """Check an already-built model; :class:`DefinitionError` with every problem if invalid."""
    problems, _ = check_definition(defn, file=file, known_actions=known_actions)
    if problems:
        raise DefinitionError(problems)
