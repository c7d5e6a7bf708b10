"""Rendering prompt templates: Jinja in a sandbox, bounded in output size, work and time.

The environment is Jinja's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` (no attribute that
starts with ``_``, no Python internals, no mutation of lists and dicts, ``range`` capped) with
``StrictUndefined`` (a missing variable is an error naming it) and no file or network access (no
loader: a template cannot include or import another). On top of it, every render has a budget:

- each loop iteration and each call (function, method, macro) counts; past ``max_iterations`` the
  render stops, as it does past its ``timeout`` (checked at each of them);
- the output, and any string or list a filter, method or operator makes, is at most
  ``max_output_chars`` long; ``*`` and ``**`` are checked before they compute, as are the widths of
  ``%`` formats and padding methods; ``str.format`` is refused (use the ``format`` filter);
- ``lipsum`` is gone (it makes text out of nothing).

A template is compiled once per source text (an LRU of compiled templates shared by every version).
"""

from __future__ import annotations

import contextvars
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

__all__ = ["Limits", "RenderError", "RenderLimitExceeded", "TemplateEnvironment", "TemplateSyntaxError", "UndefinedError"]


class Limits:
    __slots__ = ("max_output_chars", "max_iterations", "timeout")

    def __init__(self, max_output_chars: int = 200_000, max_iterations: int = 100_000, timeout: float = 0.5) -> None:
        self.max_output_chars, self.max_iterations, self.timeout = max_output_chars, max_iterations, timeout


class RenderLimitExceeded(SecurityError):
    """The render went past one of its bounds (output, work or time)."""


class RenderError(Exception):
    """A template could not be rendered; ``message`` says why (for a 400)."""


class _Budget:
    __slots__ = ("left", "deadline", "clock")

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.left = limits.max_iterations
        self.clock = clock
        self.deadline = clock() + limits.timeout

    def tick(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise RenderLimitExceeded("the template does too much work (loop iterations and calls are bounded)")
        if self.clock() > self.deadline:
            raise RenderLimitExceeded("the template takes too long to render")


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("respan_prompt_budget", default=None)

# `%` conversions: flags, width, precision. A width or precision past the output bound is refused.
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_PAD_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


class TemplateEnvironment(ImmutableSandboxedEnvironment):
    """The one sandboxed environment of the plugin (see the module's docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, limits: Limits, *, cache_size: int = 2048, clock: Callable[[], float] = time.monotonic) -> None:
        # optimized=False: no constant folding at compile time, so that nothing of a template runs
        # outside a render's budget.
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, optimized=False,
                         cache_size=0)
        self.limits = limits
        self.clock = clock
        self.globals.pop("lipsum", None)
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size

    # -- compiling --------------------------------------------------------------------------------
    def template(self, source: str) -> Any:
        """The compiled template of ``source`` (compiled once, then from the LRU); raises
        ``TemplateSyntaxError``."""
        compiled = self._compiled.get(source)
        if compiled is not None:
            self._compiled.move_to_end(source)
            return compiled
        tree = self.parse(source)
        _bound_loops(tree)
        code = self.compile(tree)
        compiled = self.template_class.from_code(self, code, self.make_globals(None))
        self._compiled[source] = compiled
        if len(self._compiled) > self._cache_size:
            self._compiled.popitem(last=False)
        return compiled

    # -- rendering --------------------------------------------------------------------------------
    def render(self, template: Any, variables: dict[str, Any]) -> str:
        """Render within the budget; raises ``UndefinedError``, ``SecurityError`` (limits included)
        and whatever a template's own error is."""
        token = _budget.set(_Budget(self.limits, self.clock))
        try:
            out: list[str] = []
            size = 0
            for piece in template.generate(variables):
                size += len(piece)
                if size > self.limits.max_output_chars:
                    raise RenderLimitExceeded(f"the rendered text is longer than {self.limits.max_output_chars} characters")
                out.append(piece)
            return "".join(out)
        finally:
            _budget.reset(token)

    def _tick(self) -> None:
        budget = _budget.get()
        if budget is not None:
            budget.tick()

    def _size(self, value: Any) -> Any:
        if isinstance(value, (str, list, tuple)) and len(value) > self.limits.max_output_chars:
            raise RenderLimitExceeded(f"the template makes a value longer than {self.limits.max_output_chars}")
        return value

    # The hook the loop bound (see _bound_loops) calls: each iteration counts.
    def respan_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self._tick()
            yield item

    # -- the sandbox's hooks ----------------------------------------------------------------------
    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self._tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and getattr(__obj, "__name__", "") in _PAD_METHODS:
            __self._check_ints(args, kwargs.values())
        return __self._size(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limit = self.limits.max_output_chars
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > limit:
                    raise RenderLimitExceeded(f"the template makes a value longer than {limit}")
        elif operator == "**":
            if isinstance(right, (int, float)) and abs(right) > 1024 and isinstance(left, (int, float)) and abs(left) > 1:
                raise RenderLimitExceeded("the template computes too large a power")
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            if len(left) + len(right) > limit:
                raise RenderLimitExceeded(f"the template makes a value longer than {limit}")
        return self._size(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if getattr(value, "__name__", None) in ("format", "format_map") and isinstance(getattr(value, "__self__", None), str):
            def refused(*args: Any, **kwargs: Any) -> str:
                raise SecurityError("str.format is not available in prompt templates: use the `format` filter")
            return refused
        return None

    # -- checks -----------------------------------------------------------------------------------
    def _check_ints(self, *groups: Iterable[Any]) -> None:
        for group in groups:
            for value in group:
                if isinstance(value, int) and not isinstance(value, bool) and value > self.limits.max_output_chars:
                    raise RenderLimitExceeded(f"an argument of {value} is past the template's bound ({self.limits.max_output_chars})")

    def _check_percent(self, fmt: str, args: Any) -> None:
        star = False
        for match in _PERCENT.finditer(fmt):
            for number in match.groups():
                if number == "*":
                    star = True
                elif number and int(number) > self.limits.max_output_chars:
                    raise RenderLimitExceeded(f"a format width of {number} is past the template's bound")
        if star:
            self._check_ints(args if isinstance(args, tuple) else (args,))

    def _bounded_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """A filter whose numeric arguments (after the value) and result are bounded."""
        env = self
        passes = hasattr(function, "jinja_pass_arg")

        def bounded(*args: Any, **kwargs: Any) -> Any:
            # Jinja passes the environment or context first to the filters marked so (pass_environment...).
            value_and_rest = args[1:] if passes else args
            if name == "format" and value_and_rest and isinstance(value_and_rest[0], str):
                env._check_percent(value_and_rest[0], tuple(value_and_rest[1:]) or tuple(kwargs.values()))
            else:
                env._check_ints(value_and_rest[1:], kwargs.values())
            return env._size(function(*args, **kwargs))

        for attr in ("jinja_pass_arg",):  # how Jinja knows to pass the environment/context
            if hasattr(function, attr):
                setattr(bounded, attr, getattr(function, attr))
        bounded.__name__ = getattr(function, "__name__", name)
        bounded.__doc__ = function.__doc__
        return bounded


class _Bounded(NodeTransformer):
    """Every ``{% for %}`` iterates through ``environment.respan_iter`` (its iterations count), and
    every ``~`` concatenation is a call of ``environment.respan_concat`` (bounded in size)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("respan_iter"), [node.iter], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("respan_concat"), list(node.nodes), [], None, None, lineno=node.lineno)


def _bound_loops(tree: nodes.Template) -> None:
    _Bounded().visit(tree)


def _concat(self: TemplateEnvironment, *parts: Any) -> str:
    total = 0
    out = []
    for part in parts:
        text = str(part)
        total += len(text)
        if total > self.limits.max_output_chars:
            raise RenderLimitExceeded(f"the template makes a value longer than {self.limits.max_output_chars}")
        out.append(text)
    return "".join(out)


TemplateEnvironment.respan_concat = _concat  # type: ignore[attr-defined]


def undefined_name(exc: UndefinedError) -> str | None:
    """The variable a StrictUndefined error is about (``'question' is undefined``), if it says."""
    match = re.match(r"^'([^']+)' is undefined$", str(exc))
    return match.group(1) if match else None
