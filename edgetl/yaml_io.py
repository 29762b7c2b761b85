"""Reading YAML a user handed edgetl (pipeline files, ``--set`` values, a run's config.yaml),
bounded: plain data only (PyYAML's safe loader: no tag runs code), and refused with a
:class:`Refused` (a ``yaml.YAMLError`` with a line number) when it would expand beyond what a
configuration ever needs -- an alias bomb ("billion laughs"), nesting deep enough to exhaust
the stack, an integer of thousands of digits, a huge scalar or file."""
from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1 << 20      # a pipeline file is a few KB
MAX_VALUES = 10_000      # values after aliases are expanded (the starter file has about 60)
MAX_DEPTH = 32           # nesting levels (a pipeline file has 3)
MAX_SCALAR = 10_000      # characters of one value (a path is at most 4,096)
MAX_INT_DIGITS = 30


class Refused(yaml.YAMLError):
    """Valid YAML that edgetl will not expand. ``problem`` and ``problem_mark`` as PyYAML's
    own errors, so callers report both kinds the same way."""

    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark

    def __str__(self) -> str:
        return self.problem


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts what each node expands to (an alias counts the whole node it
    names) and how deep nodes nest, while composing: a bomb is refused after reading a few
    hundred bytes of it, before anything is built."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0
        self._size: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            node: Any = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, SequenceNode):
            n = 1 + sum(self._size.get(id(c), 1) for c in node.value)
        elif isinstance(node, MappingNode):
            n = 1 + sum(self._size.get(id(k), 1) + self._size.get(id(v), 1) for k, v in node.value)
        else:
            n = 1
            if isinstance(node.value, str) and len(node.value) > MAX_SCALAR:
                raise Refused(f"a value of {len(node.value):,} characters (at most {MAX_SCALAR:,})", node.start_mark)
        if n > MAX_VALUES:
            raise Refused(f"expands to more than {MAX_VALUES:,} values (aliases repeat whole nodes: an alias bomb?)",
                          node.start_mark)
        self._size[id(node)] = n
        return node

    def construct_yaml_int(self, node: Any) -> int:
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise Refused(f"an integer of {digits:,} digits (at most {MAX_INT_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def load(text: str | bytes) -> Any:
    """``yaml.safe_load`` within the bounds above; raises ``yaml.YAMLError`` (a :class:`Refused`
    for out-of-bounds input)."""
    if len(text) > MAX_BYTES:
        raise Refused(f"{len(text):,} bytes (a configuration is at most {MAX_BYTES:,})")
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:  # pragma: no cover - MAX_DEPTH stops nesting first
        raise Refused(f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def problem(e: yaml.YAMLError) -> str:
    """PyYAML's error as one line: what is wrong and where (line N)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or next(iter(str(e).splitlines()), "") or type(e).__name__
    return " ".join(str(what).split())[:200] + (f" (line {mark.line + 1})" if mark is not None else "")
