"""Values by key and by group: a value that changes group leaves its old one."""

from __future__ import annotations

from workflowplane.kits.grouped import Grouped


def test_a_value_is_found_by_its_key_and_in_its_group_only() -> None:
    grouped: Grouped[str, str, tuple[str, int]] = Grouped(lambda value: value[0])
    grouped.put("a", ("p1", 1))
    grouped.put("b", ("p1", 2))
    grouped.put("a", ("p2", 3))  # moved
    assert dict(grouped.group("p1")) == {"b": ("p1", 2)}
    assert dict(grouped.group("p2")) == {"a": ("p2", 3)}
    assert grouped.pop("b") == ("p1", 2) and grouped.pop("b") is None
    assert dict(grouped.group("p1")) == {} and "p1" not in grouped._groups  # none left behind
    assert grouped.by_key == {"a": ("p2", 3)}
