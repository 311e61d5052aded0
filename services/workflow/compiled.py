"""A validated, compiled workflow and the pure run-time decisions the router asks of it.

:func:`compile_workflow` validates once and compiles every expression once; the resulting
:class:`CompiledWorkflow` answers, without I/O and deterministically:

* does this trigger start a run? (:meth:`~CompiledWorkflow.matches`)
* given the steps' statuses, which steps start now, which are skipped, is the run over?
  (:meth:`~CompiledWorkflow.advance`)
* what are a step's inputs / is its condition true? (:meth:`~CompiledWorkflow.render_inputs`,
  :meth:`~CompiledWorkflow.evaluate_when`)

A definition's ``context:`` entries are hidden steps here: ``context.<name>`` (no needs, the read
action, inputs over ``trigger``), which every root step needs, so the DAG itself holds the rule
"the context is read, once, before any step". They are in :meth:`~CompiledWorkflow.step_ids`,
:meth:`~CompiledWorkflow.step` and the graph, not in ``definition.steps``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from services.contracts.vocabulary import ErrorKind
from services.contracts.vocabulary import StepStatus as StepStatus  # part of services.workflow's API
from services.workflow.dag import Dag
from services.workflow.expressions import CompiledExpression, EvalContext, ExpressionError
from services.workflow.models import RetryPolicy, Step, WorkflowDefinition
from services.workflow.problems import DefinitionError
from services.workflow.templates import CompiledInputs
from services.workflow.validation import check_definition

if TYPE_CHECKING:
    from services.contracts.records import JsonObject

_DONE_OK = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})

RunOutcome = Literal["succeeded", "failed", "cancelled"]

#: Error kind for a step whose condition or inputs cannot be evaluated.
EXPRESSION_ERROR = ErrorKind.EXPRESSION_ERROR


@dataclass(frozen=True, slots=True)
class StepFailure:
    """A step that fails without running, e.g. because its ``when`` could not be evaluated."""

    step_id: str
    error_kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Advance:
    """What to do next in a run (see :meth:`CompiledWorkflow.advance`).

    * ``start`` — steps to start now, in topological order;
    * ``skip`` — steps to mark skipped now (already propagated: a fixed point);
    * ``fail`` — steps to mark failed now without running them (condition errors);
    * ``outcome`` — ``None`` while the run goes on, else how it ended.
    """

    start: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    fail: tuple[StepFailure, ...] = ()
    outcome: RunOutcome | None = None


@dataclass(frozen=True, slots=True, eq=False)
class CompiledWorkflow:
    """A definition that passed validation, with its DAG and every expression compiled."""

    definition: WorkflowDefinition
    dag: Dag
    _filter: CompiledExpression | None
    _when: Mapping[str, CompiledExpression]
    _inputs: Mapping[str, CompiledInputs]
    _steps: Mapping[str, Step]
    #: Expressions inside the steps' kind specs, by (step id, field path), e.g. ``wait.until``.
    _spec_expressions: Mapping[tuple[str, str], CompiledExpression] = field(default_factory=dict)
    _match: Mapping[str, CompiledExpression] = field(default_factory=dict)  # wait_for.match by step
    #: The ``wait_for`` steps: step id -> the event type each waits for (intake asks per trigger).
    event_waits: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def version(self) -> int:
        return self.definition.version

    def step(self, step_id: str) -> Step:
        """The step model (``KeyError`` for an unknown id)."""
        return self._steps[step_id]

    def step_ids(self) -> tuple[str, ...]:
        """All step ids in declaration order, the hidden context steps first."""
        return self.dag.order

    def retry_policy(self, step_id: str) -> RetryPolicy:
        return self._steps[step_id].retry

    def timeout(self, step_id: str) -> float:
        """Seconds one attempt of ``step_id`` may take."""
        return self._steps[step_id].timeout

    # --- graph ---------------------------------------------------------------------------------

    def roots(self) -> tuple[str, ...]:
        return self.dag.roots()

    def children(self, step_id: str) -> tuple[str, ...]:
        return self.dag.children(step_id)

    def parents(self, step_id: str) -> tuple[str, ...]:
        return self.dag.parents(step_id)

    def topological_order(self) -> tuple[str, ...]:
        return self.dag.topological_order()

    # --- expressions ---------------------------------------------------------------------------

    def matches(self, trigger: Mapping[str, Any]) -> bool:
        """Whether an event starts a run: ``trigger["event"]`` equals the trigger's event type and
        the filter (if any) is true for ``trigger``. An unevaluable filter raises
        :class:`ExpressionError` (the router decides: not a match, recorded with the reason)."""
        if trigger.get("event") != self.definition.trigger.event:
            return False
        if self._filter is None:
            return True
        return self._filter.evaluate_bool(EvalContext(trigger).variables())

    def evaluate_when(self, step_id: str, ctx: EvalContext) -> bool:
        """The step's condition (``True`` when it has none); :class:`ExpressionError` on failure."""
        self._steps[step_id]  # KeyError for unknown steps
        expr = self._when.get(step_id)
        return True if expr is None else expr.evaluate_bool(ctx.variables())

    def spec_expression(self, step_id: str, path: str) -> CompiledExpression:
        """The compiled expression at ``path`` of the step's kind spec (``KeyError`` if none)."""
        return self._spec_expressions[(step_id, path)]

    def evaluate_match(self, step_id: str, variables: Mapping[str, Any]) -> bool:
        """A ``wait_for`` step's ``match`` over ``variables`` (``event``, ``trigger``, ``steps``);
        ``True`` when it has none; :class:`ExpressionError` on failure."""
        expr = self._match.get(step_id)
        return True if expr is None else expr.evaluate_bool(variables)

    def match_expression(self, step_id: str) -> CompiledExpression | None:
        """A ``wait_for`` step's compiled ``match`` (None: any event of its type matches), for a
        caller that budgets the cost of many evaluations (:mod:`services.router.event_waits`)."""
        return self._match.get(step_id)

    def render_inputs(self, step_id: str, ctx: EvalContext) -> JsonObject:
        """The step's inputs with templates evaluated; :class:`ExpressionError` on failure."""
        return self._inputs[step_id].render(ctx.variables())

    # --- run progress --------------------------------------------------------------------------

    def advance(self, statuses: Mapping[str, StepStatus], ctx: EvalContext) -> Advance:
        """Decide the next moves of a run from the current step statuses (missing = pending).

        A pending step is *ready* when each of its needs succeeded or was skipped and at least one
        succeeded (roots are ready at once). A ready step starts if its ``when`` is absent or true,
        else it is skipped. A pending step whose needs were all skipped has no live path and is
        skipped too. Skips propagate within one call, so calling again with the returned skips
        applied yields nothing new. Outcome: ``failed`` as soon as any step failed (nothing new
        starts then), ``cancelled`` if any step was cancelled, ``succeeded`` once every step
        succeeded or was skipped, else ``None``. A ``when`` that cannot be evaluated yields a
        :class:`StepFailure` with kind ``expression_error`` and the outcome ``failed``.
        """
        unknown = set(statuses) - set(self._steps)
        if unknown:
            raise KeyError(f"unknown step ids in statuses: {sorted(unknown)}")
        current = {sid: StepStatus(statuses.get(sid, StepStatus.PENDING)) for sid in self.dag.order}
        if StepStatus.FAILED in current.values():
            return Advance(outcome="failed")
        if StepStatus.CANCELLED in current.values():
            return Advance(outcome="cancelled")
        start: list[str] = []
        skip: list[str] = []
        failures: list[StepFailure] = []
        variables: JsonObject | None = None
        for sid in self.dag.topological_order():
            if current[sid] is not StepStatus.PENDING:
                continue
            needs = [current[p] for p in self.dag.parents(sid)]
            if not all(s in _DONE_OK for s in needs):
                continue
            if needs and StepStatus.SUCCEEDED not in needs:
                current[sid] = StepStatus.SKIPPED
                skip.append(sid)
                continue
            expr = self._when.get(sid)
            if expr is None:
                start.append(sid)
                continue
            if variables is None:
                variables = ctx.variables()
            try:
                go = expr.evaluate_bool(variables)
            except ExpressionError as exc:
                failures.append(StepFailure(sid, EXPRESSION_ERROR, str(exc)))
                continue
            if go:
                start.append(sid)
            else:
                current[sid] = StepStatus.SKIPPED
                skip.append(sid)
        if failures:
            return Advance(skip=tuple(skip), fail=tuple(failures), outcome="failed")
        outcome: RunOutcome | None = None
        if not start and all(s in _DONE_OK for s in current.values()):
            outcome = "succeeded"
        return Advance(start=tuple(start), skip=tuple(skip), outcome=outcome)


def compile_workflow(
    defn: WorkflowDefinition, known_actions: Collection[str] | None = None, *, file: str = "<definition>"
) -> CompiledWorkflow:
    """Validate ``defn`` (all cross-field rules) and compile its expressions once.

    Raises :class:`DefinitionError` listing every problem.
    """
    problems, parts = check_definition(defn, file=file, known_actions=known_actions)
    if problems:
        raise DefinitionError(problems)
    assert parts.dag is not None
    return CompiledWorkflow(
        definition=defn,
        dag=parts.dag,
        _filter=parts.trigger_filter,
        _when=dict(parts.when),
        _inputs=dict(parts.inputs),
        _steps={s.id: s for s in [*defn.context_steps(), *defn.steps]},
        _spec_expressions=dict(parts.spec_expressions),
        _match=dict(parts.match),
        event_waits={s.id: s.wait_for.event for s in defn.steps if s.wait_for is not None},
    )
