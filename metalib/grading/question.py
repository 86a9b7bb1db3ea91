"""A graded question as a short declaration; the generic code that probes and judges it.

A question says only what is particular to it::

    Q2 = Question(
        "q2", "squared_distances", points=2, title="squared Euclidean distances",
        build=distance_inputs,          # trusted: a case's plain-data spec -> the arguments
        reference=reference_distances,  # metalib's own function, with the student's signature
        mistakes=(Mistake("this is ‖q − c‖, not its square", not_squared),),
        rule="Entry [t, p, n] is ‖q_p − c_n‖²",
        visible=(case("2 tasks", tasks=2, seed=0), ...),
    )

and this module does the rest, the same way for every question:

* **probing** (:func:`probe`, in the grader's sandbox or the notebook's kernel): build the
  arguments from the spec, call the student's function on them positionally, reduce what comes
  back to plain data (:func:`plain`, or the question's ``observe``), and record which inputs it
  changed in place; a ``raises`` case calls it on valid input first, then on input it must refuse;
* **judging** (:meth:`Question.judge`, in the trusted process only): the same probe on the
  reference gives the expected value; outputs are compared by dtype-aware tolerance
  (:func:`difference`, which names the first entry that differs); a wrong answer is matched
  against each known mistake, whose message then says what went wrong.

``build`` and ``observe`` run inside the sandbox, so they must be module-level functions of an
importable module (the sandbox imports them by name, see :func:`qualified`); the reference, the
mistakes and ``check`` run only in the grader's own process.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Spec = dict[str, Any]
TOLERANCE = {
    torch.float64: {"rtol": 1e-7, "atol": 1e-9},
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
}
PROBE = "metalib.grading.question:probe"
COMPARE = "compare with the reference"  # what a question's check returns to go on comparing


# ------------------------------------------------------------------------- declaring cases


@dataclass(frozen=True)
class Case:
    """One input of a question: what the student reads, and plain data for the sandbox.

    Attributes:
        label: what a student reads in feedback, e.g. ``"12 classes, 5-way, seed 3"``.
        kwargs: the spec given to the question's ``build`` (plain data only: tensors, numbers,
            strings, lists, tuples, dicts, which ``torch.load(weights_only=True)`` reads back);
            for a ``raises`` case, ``{"bad": spec, "valid": spec}``.
        probe: ``"question"`` or ``"raises"``.
    """

    label: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    probe: str = "question"


def case(label: str, **spec: Any) -> Case:
    """A case: its label (what the student reads) and the plain-data spec given to ``build``."""
    return Case(label, spec, probe="question")


def raises(label: str, bad: Spec, valid: Spec) -> Case:
    """A case whose input ``bad`` must be refused with a ``ValueError``; ``valid`` must not be.

    The valid call comes first, so that a function refusing everything does not pass.
    """
    return Case(label, {"bad": bad, "valid": valid}, probe="raises")


@dataclass(frozen=True)
class Mistake:
    """A known mistake: the reference with it (the student's signature) and what to say.

    ``when(spec)`` limits it to the cases where it differs from the right answer.
    """

    says: str
    fn: Callable[..., Any]
    when: Callable[[Spec], bool] | None = None


def variants(fn: Callable[..., Any], says: Mapping[str, str]) -> tuple[Mistake, ...]:
    """A :class:`Mistake` per ``{variant: what to say}``: ``fn`` called with ``variant=...``."""
    return tuple(Mistake(text, functools.partial(fn, variant=v)) for v, text in says.items())


def importable(fn: Callable[..., Any]) -> str | None:
    """``"module:name"`` of a function of a metalib module, which the sandbox can import."""
    name, module = getattr(fn, "__qualname__", ""), getattr(fn, "__module__", "") or ""
    if module.split(".")[0] != "metalib" or not name or "<" in name or "." in name:
        return None
    return f"{module}:{name}"


def qualified(fn: Callable[..., Any]) -> str:
    """``"module:name"`` of a module-level function of metalib, the way the sandbox imports it.

    Raises:
        ValueError: ``fn`` is a lambda, a closure, a method or outside metalib, which the
            sandbox does not import.
    """
    name = importable(fn)
    if name is None:
        raise ValueError(
            f"{fn!r}: build and observe must be module-level functions of a metalib module (the "
            "sandbox imports them by name; metalib.grading.question.given passes plain data as "
            "it is)"
        )
    return name


def resolve(name: str) -> Callable[..., Any]:
    """The function ``"module:name"`` names; only ``metalib`` modules are imported."""
    module, _, attr = name.partition(":")
    if not (module == "metalib" or module.startswith("metalib.")):
        raise ValueError(f"the grader only runs metalib's own builders, not {name!r}")
    return getattr(importlib.import_module(module), attr)


def given(**spec: Any) -> dict[str, Any]:
    """The builder of questions whose arguments are plain data already: the spec, as it is."""
    return spec


def find_probe(name: str) -> Callable[..., Any]:
    """The probe ``"module:function"`` of a case's request (:meth:`Question.request`)."""
    if ":" not in name:
        raise ValueError(f"the grader has no probe {name!r}")
    return resolve(name)


@contextlib.contextmanager
def references(namespace: dict, names: dict[str, str]) -> Iterator[None]:
    """Put the reference ``"module:function"`` in ``namespace`` under each name, for a while.

    A later question that calls an earlier question's function then calls the reference, so a
    mistake in the earlier answer costs that question's points only.
    """
    kept = {k: namespace[k] for k in names if k in namespace}
    try:
        namespace.update({k: resolve(v) for k, v in names.items()})
        yield
    finally:
        for k in names:
            namespace.pop(k, None)
        namespace.update(kept)


# ------------------------------------------------------------------------- probing


def plain(value: Any) -> Any:
    """``value`` as plain data: tensors detached and moved to the CPU, containers walked.

    Raises:
        TypeError: for anything else (a module, a generator, an open file...), naming its type.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    raise TypeError(
        f"the function returned a {type(value).__name__}; the question expects tensors, numbers "
        "or lists and dicts of them"
    )


def call(fn: Callable[..., Any], args: Mapping[str, Any], spec: Spec) -> Any:
    """The default ``observe``: ``fn`` on the arguments in order, its result as plain data."""
    return plain(fn(*args.values()))


def _state(value: Any) -> Any:
    """A copy of everything in ``value`` that a function could change in place."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.nn.Module):
        return {k: t.detach().clone() for k, t in value.state_dict(keep_vars=True).items()}
    if isinstance(value, (list, tuple)):
        return [_state(v) for v in value]
    if isinstance(value, dict):
        return {k: _state(v) for k, v in value.items()}
    return None


def _same_state(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, dict)):
        keys = range(len(a)) if isinstance(a, list) else a.keys()
        if len(a) != len(b) or (isinstance(a, dict) and a.keys() != b.keys()):
            return False
        return all(_same_state(a[k], b[k]) for k in keys)
    return True


def probe(
    fn: Callable[..., Any], build: str, spec: Spec, observe: str | None = None
) -> dict[str, Any]:
    """Build the case's arguments, run ``fn`` on them, and report its output as plain data.

    Returns:
        ``{"out": plain output, "changed": [names of the arguments changed in place]}``.
    """
    args = resolve(build)(**spec)
    before = {k: _state(v) for k, v in args.items()}
    out = (resolve(observe) if observe else call)(fn, args, spec)
    changed = [k for k, v in args.items() if not _same_state(before[k], _state(v))]
    return {"out": out, "changed": changed}


def probe_raises(fn: Callable[..., Any], build: str, bad: Spec, valid: Spec) -> dict[str, Any]:
    """``fn`` on the valid arguments (must work), then on the bad ones (should raise).

    Returns:
        ``{"valid_error": text}``, ``{"error": None}`` (it returned), or
        ``{"error": exception type name, "message": text}``. ``NotImplementedError`` propagates.
    """
    builder = resolve(build)
    with torch.random.fork_rng(devices=[]):
        try:
            fn(*builder(**valid).values())
        except NotImplementedError:
            raise
        except Exception as err:  # the judge reports it
            return {"valid_error": f"{type(err).__name__}: {err}"}
        try:
            fn(*builder(**bad).values())
        except NotImplementedError:
            raise
        except Exception as err:  # the judge decides whether it is the error asked for
            return {"error": type(err).__name__, "message": str(err)}
    return {"error": None}


# ------------------------------------------------------------------------- comparing


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """``rtol``/``atol`` for ``dtype``: 1e-7/1e-9 in float64, 1e-4/1e-5 otherwise; ``atol``
    grows with ``scale`` (the largest magnitude of the expected tensor) beyond 1, since rounding
    errors of entries that should be 0 (a gradient that cancels) grow with the computation's."""
    found = TOLERANCE.get(dtype, TOLERANCE[torch.float32])
    return {"rtol": found["rtol"], "atol": found["atol"] * max(1.0, scale)}


def show(t: torch.Tensor, limit: int = 4) -> str:
    """The first ``limit`` values of ``t``, for a message."""
    values = t.detach().flatten()[:limit]
    text = (
        [f"{v:.6g}" for v in values.double().tolist()]
        if t.is_floating_point()
        else [str(v) for v in values.tolist()]
    )
    return f"[{', '.join(text)}{', ...' if t.numel() > limit else ''}]"


def _limits(tol: Mapping) -> dict[str, float]:
    """``tol``'s own ``rtol`` and ``atol`` (not those it gives a dict's keys)."""
    return {k: v for k, v in tol.items() if k in ("rtol", "atol")}


def difference(
    got: Any, want: Any, what: str = "the result", hints: Mapping = {}, tol: Mapping | None = None
) -> str | None:
    """``None`` when ``got`` matches ``want``; else what differs first, as a sentence.

    Tensors must have ``want``'s shape and dtype and its values within :func:`tolerance`;
    dicts the same keys, sequences the same length, numbers the same value (floats within
    tolerance), anything else be equal. ``hints`` maps a wrong shape to what it suggests.
    ``tol`` (``{"rtol": ..., "atol": ...}``) may give a key of a dict its own tolerance:
    ``{"rtol": 0, "atol": 0.05, "pixels": {"rtol": 0, "atol": 0.005}}``.
    """
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{what}: expected a tensor, got a {type(got).__name__}"
        if got.shape != want.shape:
            hint = hints.get(tuple(got.shape))
            text = f"{what}: got shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            return f"{text}: {hint}" if hint else text
        if got.dtype != want.dtype:
            return f"{what}: got dtype {got.dtype}, expected {want.dtype}"
        if not want.is_floating_point():
            bad = got != want
        else:
            scale = float(want.abs().nan_to_num(0, 0, 0).max()) if want.numel() else 1.0
            limits = tolerance(want.dtype, scale) if tol is None else _limits(tol)
            bad = ~torch.isclose(got, want, **limits, equal_nan=True)
        if not bad.any():
            return None
        index = [int(i) for i in bad.nonzero()[0]]
        where = f" at index {index}" if index else ""
        g, w = got[tuple(index)], want[tuple(index)]
        shown_w, shown_g = show(w)[1:-1], show(g)[1:-1]
        if shown_w == shown_g:  # the gap is in later digits
            shown_w, shown_g = f"{float(w):.12g}", f"{float(g):.12g}"
        text = f"{what}{where}: expected {shown_w}, got {shown_g}"
        gaps = (got - want).abs() if want.is_floating_point() else torch.zeros(0)
        gaps = gaps[~gaps.isnan()]  # inf - inf: an inf where inf is expected is no gap
        if want.numel() > 1 and gaps.numel() and gaps.isfinite().all():
            text += f" (off by up to {float(gaps.max()):.2g} overall)"
        return text
    if isinstance(want, Mapping):
        if not isinstance(got, Mapping):
            return f"{what}: expected a dict, got a {type(got).__name__}"
        missing, extra = [k for k in want if k not in got], [k for k in got if k not in want]
        if missing:
            return f"{what} has no {missing[0]!r}"
        if extra:
            return f"{what} has {extra[0]!r}, which is not expected"
        part = lambda k: tol[k] if tol is not None and isinstance(tol.get(k), Mapping) else tol  # noqa: E731
        return next(
            (
                d
                for k in want
                if (d := difference(got[k], want[k], f"{what}[{k!r}]", hints, part(k)))
            ),
            None,
        )
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"{what}: expected a {type(want).__name__}, got a {type(got).__name__}"
        if len(got) != len(want):
            return f"{what}: expected {len(want)} items, got {len(got)}"
        return next(
            (
                d
                for i, (g, w) in enumerate(zip(got, want, strict=True))
                if (d := difference(g, w, f"{what}[{i}]", hints, tol))
            ),
            None,
        )
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        limits = tolerance(torch.float32) if tol is None else _limits(tol)
        ok = torch.isclose(torch.tensor(float(got)), torch.tensor(want), **limits)
        return None if ok else f"{what}: expected {want:.6g}, got {float(got):.6g}"
    if got != want or type(got) is not type(want):
        return f"{what}: expected {want!r}, got {got!r}"
    return None


# ------------------------------------------------------------------------- judging


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for a while, as in the sandbox: the same rounding (so the same
    training) in the sandbox and in the grader, and no threads spinning over tiny tensors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def judge_raises(case: Case, out: Any) -> str | None:
    """A case of input the function must refuse with a ``ValueError`` (after a valid one)."""
    if "valid_error" in out:
        return f"on valid input it raised {out['valid_error']}"[:400]
    if out["error"] is None:
        return "expected a ValueError (this input is impossible), but the function returned"
    if out["error"] != "ValueError":
        return (
            f"expected a ValueError, got {out['error']}: {out['message']}; check the input "
            "first and raise ValueError with a message that says what to change"
        )
    return None


@dataclass(frozen=True)
class Question:
    """A graded question, declared (see the module docstring).

    Attributes:
        name, function, points, title: ``"q1"``, the student's function, its points, a title.
        build: ``build(**spec) -> {argument name: value}`` in the student's argument order.
        reference: the right answer, called like the student's function; also given to later
            questions that call this one, so that each question is graded on its own.
        visible, hidden: cases (:func:`case`, :func:`raises`); hidden ones only the grader runs.
        mistakes: known mistakes, tried in order when an answer is wrong.
        observe: ``observe(fn, args, spec) -> plain data``, instead of :func:`call` (to call
            ``fn`` several times, or take gradients through its output).
        check: ``check(spec, got, want) -> message or None``, instead of :func:`difference`
            (properties rather than equality); returning :data:`COMPARE` goes on to the
            comparison and the known mistakes (a check of what they cannot tell).
        claims: ``claims(spec, got) -> message or None``: what holds whatever the seed (an
            experiment's), said when an answer differs and no known mistake explains it.
        what: the output's name in messages; ``hints(spec) -> {wrong shape: hint}``.
        rule: what the right answer is, appended to a wrong answer's message.
        pure: whether changing an input in place is wrong; ``changed`` says, per argument,
            what to do instead (default: "leave the inputs as they are").
        tolerance: ``{"rtol": ..., "atol": ...}`` for every float, instead of :func:`tolerance`
            (see :func:`difference` for a tolerance per part), or ``tolerance(spec)`` giving it.
        seconds: the time limit of each of its cases (an experiment's sweep), instead of the
            grader's ``--case-timeout``.
    """

    name: str
    function: str
    points: float
    build: Callable[..., dict[str, Any]]
    visible: Sequence[Case]
    reference: Callable[..., Any] | None = None
    hidden: Sequence[Case] = ()
    mistakes: Sequence[Mistake] = ()
    observe: Callable[..., Any] | None = None
    check: Callable[[Spec, Any, Any], str | None] | None = None
    claims: Callable[[Spec, Any], str | None] | None = None
    title: str = ""
    what: str = "the result"
    hints: Callable[[Spec], Mapping] | None = None
    rule: str = ""
    pure: bool = True
    changed: Mapping[str, str] = field(default_factory=dict)
    tolerance: Mapping[str, Any] | Callable[[Spec], Mapping[str, Any]] | None = None
    seconds: float | None = None
    _names: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _memo: dict[tuple, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.points <= 0:
            raise ValueError(f"{self.name}: points must be positive, got {self.points}")
        if not self.visible:
            raise ValueError(f"{self.name}: a question needs at least one visible case")
        if self.reference is None and self.check is None:
            raise ValueError(f"{self.name}: give a reference, a check, or both")
        self._names["build"] = qualified(self.build)
        if self.observe is not None:
            self._names["observe"] = qualified(self.observe)

    def request(self, case: Case) -> dict[str, Any]:
        """What the sandbox runs for ``case``: a probe's name and its plain-data arguments."""
        if case.probe == "raises":
            return {
                "probe": "metalib.grading.question:probe_raises",
                "kwargs": {"build": self._names["build"], **case.kwargs},
            }
        kwargs = {"build": self._names["build"], "spec": case.kwargs}
        limit = {} if self.seconds is None else {"seconds": float(self.seconds)}
        return {
            "probe": PROBE,
            "kwargs": {**kwargs, "observe": self._names.get("observe")},
            **limit,
        }

    def run(self, fn: Callable[..., Any], case: Case) -> Any:
        """Probe ``fn`` on ``case`` in this process (the notebook's instant check)."""
        request = self.request(case)
        return resolve(request["probe"])(fn, **copy.deepcopy(request["kwargs"]))

    def expected(self, fn: Callable[..., Any], spec: Spec) -> Any:
        """What :func:`probe` reports for ``fn`` (the reference or a mistake) on ``spec``, on
        one thread as in the sandbox (the same rounding, so the same training); remembered, so
        that the judge runs each once per case, not once per answer judged."""
        key = (fn, repr(sorted(spec.items())))
        if key not in self._memo:
            with torch.random.fork_rng(devices=[]), one_thread():
                torch.manual_seed(0)
                out = probe(fn, self._names["build"], spec, self._names.get("observe"))["out"]
            self._memo[key] = out
        return copy.deepcopy(self._memo[key])

    def judge(self, case: Case, output: Any) -> str | None:
        """``None`` when ``output`` (from :meth:`run` or the sandbox) is right, else a message."""
        return self.diagnose(case, output)[0]

    def diagnose(self, case: Case, output: Any) -> tuple[str | None, str | None]:
        """``(message or None, the known mistake it matched or None)``: :meth:`judge`, and which
        :class:`Mistake` a wrong answer is (for the class report)."""
        if case.probe == "raises":
            return judge_raises(case, output), None
        spec = case.kwargs
        if self.pure and output["changed"]:
            names = " and ".join(output["changed"])
            advice = next((self.changed[k] for k in output["changed"] if k in self.changed), None)
            text = f"{names} changed in place; {advice or 'leave the inputs as they are'}"
            return text, "inputs changed in place"
        got = output["out"]
        want = self.expected(self.reference, spec) if self.reference is not None else None
        if self.check is not None:
            verdict = self.check(spec, got, want)
            if verdict is not COMPARE:
                return verdict, None
        claim = self.claims(spec, got) if self.claims is not None else None
        return self.compare(spec, got, want, f"{claim}." if claim else None)

    def compare(
        self, spec: Spec, got: Any, want: Any, otherwise: str | None = None
    ) -> tuple[str | None, str | None]:
        """``(message or None, known mistake or None)``: :func:`difference` with the question's
        hints and tolerance, then its known mistakes, then ``otherwise`` (what a ``check`` found
        that the comparison cannot see) or the rule."""
        hints = self.hints(spec) if self.hints else {}
        tol = self.tolerance(spec) if callable(self.tolerance) else self.tolerance
        wrong = difference(got, want, self.what, hints, tol)
        if wrong is None:
            return None, None
        rule = f" {self.rule}." if self.rule else ""
        for mistake in self.mistakes:
            if mistake.when is None or mistake.when(spec):
                guess = self.expected(mistake.fn, spec)
                if difference(got, guess, self.what, {}, tol) is None:
                    return f"{wrong}: {mistake.says}.{rule}", mistake.says
        if otherwise:
            return f"{wrong}; {otherwise}", None
        return (f"{wrong}.{rule}" if rule else wrong), None


@dataclass(frozen=True)
class Exercise:
    """The questions of one exercise notebook, e.g. ``Exercise("00_tasks", (q1, q2, q3))``."""

    name: str
    questions: Sequence[Question]

    def __post_init__(self) -> None:
        names = [q.name for q in self.questions]
        if len(set(names)) != len(names):
            raise ValueError(f"exercise {self.name}: question names repeat: {names}")

    def references(self, name: str) -> dict[str, str]:
        """``{function: "module:name" of its reference}`` of the questions before ``name``.

        A later question that calls an earlier one's function gets the reference instead of the
        student's own, so that each question is graded on its own.
        """
        found = {}
        for q in self.questions:
            if q.name == name:
                return found
            where = importable(q.reference) if q.reference is not None else None
            if where is not None:  # what the sandbox can import
                found[q.function] = where
        raise ValueError(f"exercise {self.name} has no question {name!r}")

    def request(self, hidden: bool = True) -> list[dict[str, Any]]:
        """The questions as the sandbox runs them (plain data): function, cases, references."""
        return [
            {
                "name": q.name,
                "function": q.function,
                "cases": [q.request(c) for c in (*q.visible, *(q.hidden if hidden else ()))],
                "references": self.references(q.name),
            }
            for q in self.questions
        ]

    def question(self, name: str) -> Question:
        for q in self.questions:
            if q.name == name:
                return q
        known = ", ".join(q.name for q in self.questions)
        raise ValueError(f"exercise {self.name} has no question {name!r}; it has {known}")
