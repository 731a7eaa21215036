"""Hypothesis strategies shared by test modules."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from bridge.codec.schemas import load_schemas
from tests.helpers import sample

KINDS = sorted(load_schemas())

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(paths(value, (*prefix, index)))
    return found


def at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(KINDS))
    data = copy.deepcopy(sample(draw(st.sampled_from(["call", kind]))))
    for _ in range(draw(st.integers(1, 6))):
        path = draw(st.sampled_from(paths(data)[1:]))
        parent, last = at(data, path[:-1]), path[-1]
        operation = draw(st.sampled_from(["add", "remove", "replace"]))
        if operation == "add" and isinstance(at(data, path), dict):
            at(data, path)[draw(st.text(max_size=12))] = draw(json_values)
        elif operation == "remove":
            del parent[last]
        else:
            parent[last] = draw(json_values)
    return kind, data
