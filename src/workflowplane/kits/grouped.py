"""Values by key and by group, so that a lookup of one group costs that group alone."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Group = TypeVar("Group", bound=Hashable)
Value = TypeVar("Value")


class Grouped(Generic[Key, Group, Value]):
    """Each value under its key, and the keys of each group (``group_of`` the value, which
    must not change while it is held). A scan of every value per lookup made each tenant's
    lookups cost time in the number of all tenants' objects."""

    def __init__(self, group_of: Callable[[Value], Group]) -> None:
        self.by_key: dict[Key, Value] = {}
        self._groups: dict[Group, dict[Key, Value]] = {}
        self._group_of = group_of

    def put(self, key: Key, value: Value) -> None:
        self.pop(key)
        self.by_key[key] = value
        self._groups.setdefault(self._group_of(value), {})[key] = value

    def pop(self, key: Key) -> Value | None:
        if key not in self.by_key:
            return None
        value = self.by_key.pop(key)
        group = self._group_of(value)
        members = self._groups[group]
        del members[key]
        if not members:
            del self._groups[group]
        return value

    def group(self, group: Group) -> Mapping[Key, Value]:
        """The keys and values of ``group`` (empty when it has none); not to be changed."""
        members = self._groups.get(group)
        return {} if members is None else members
