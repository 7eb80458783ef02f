"""Run parameters against the workflow's schema: defaults, required, unknown, coercion."""

from __future__ import annotations

from typing import Any

import pytest

from workflowplane.runs.parameters import resolve_parameters
from workflowplane.runs.render import RenderError


def obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, **extra}


def test_no_schema_passes_given_parameters_through_unchanged() -> None:
    given = {"count": "3", "anything": {"x": [1]}}
    assert resolve_parameters(None, given) == given


def test_no_schema_and_no_parameters_gives_an_empty_object() -> None:
    assert resolve_parameters(None, None) == {}


def test_defaults_fill_missing_parameters() -> None:
    schema = obj({"image": {"type": "string", "default": "alpine"}, "n": {"type": "integer"}})
    assert resolve_parameters(schema, {"n": 2}) == {"image": "alpine", "n": 2}


def test_given_value_beats_the_default() -> None:
    schema = obj({"image": {"type": "string", "default": "alpine"}})
    assert resolve_parameters(schema, {"image": "busybox"}) == {"image": "busybox"}


def test_nested_defaults_are_filled_even_when_the_parent_is_absent() -> None:
    schema = obj(
        {
            "git": obj(
                {
                    "branch": {"type": "string", "default": "main"},
                    "depth": {"type": "integer", "default": 1},
                }
            )
        }
    )
    assert resolve_parameters(schema, None) == {"git": {"branch": "main", "depth": 1}}
    assert resolve_parameters(schema, {"git": {"depth": "5"}}) == {
        "git": {"branch": "main", "depth": 5}
    }


def test_absent_optional_scalars_without_default_are_left_out() -> None:
    schema = obj({"a": {"type": "string"}, "b": {"type": "integer"}})
    assert resolve_parameters(schema, {}) == {}


def test_missing_required_parameters_are_all_named() -> None:
    schema = obj(
        {"repo": {"type": "string"}, "tag": {"type": "string"}, "x": {"type": "string"}},
        required=["repo", "tag"],
    )
    with pytest.raises(RenderError) as caught:
        resolve_parameters(schema, {"x": "1"})
    assert str(caught.value) == "parameters: missing required parameter 'repo', 'tag'"


def test_required_parameter_with_a_default_is_not_missing() -> None:
    schema = obj({"repo": {"type": "string", "default": "r"}}, required=["repo"])
    assert resolve_parameters(schema, {}) == {"repo": "r"}


def test_missing_required_nested_parameter_names_its_path() -> None:
    schema = obj({"git": obj({"url": {"type": "string"}}, required=["url"])}, required=["git"])
    with pytest.raises(RenderError, match=r"^parameters\.git: missing required parameter 'url'"):
        resolve_parameters(schema, {"git": {}})


def test_absent_optional_object_does_not_enforce_its_required_keys() -> None:
    schema = obj({"git": obj({"url": {"type": "string"}}, required=["url"])})
    assert "url" not in resolve_parameters(schema, {}).get("git", {})


def test_unknown_parameter_is_named_with_the_declared_list() -> None:
    schema = obj({"repo": {"type": "string"}, "branch": {"type": "string"}})
    with pytest.raises(RenderError) as caught:
        resolve_parameters(schema, {"repo": "r", "colour": "red", "bogus": 1})
    assert str(caught.value) == (
        "parameters: unknown parameter 'bogus', 'colour' (the workflow declares: branch, repo)"
    )


def test_unknown_parameter_when_nothing_is_declared_says_none() -> None:
    schema = {"type": "object", "properties": {}, "x-kubernetes-preserve-unknown-fields": False}
    with pytest.raises(RenderError, match=r"unknown parameter 'a' \(the workflow declares: none\)"):
        resolve_parameters(schema, {"a": 1})


def test_additional_properties_allow_unknown_parameters() -> None:
    schema = obj({"repo": {"type": "string"}}, additionalProperties=True)
    assert resolve_parameters(schema, {"repo": "r", "extra": "x"}) == {"repo": "r", "extra": "x"}


def test_object_without_declared_properties_is_open_ended() -> None:
    assert resolve_parameters({"type": "object"}, {"a": "1"}) == {"a": "1"}


@pytest.mark.parametrize(
    ("kind", "given", "expected"),
    [
        ("integer", "3", 3),
        ("integer", " 42 ", 42),
        ("integer", 7, 7),
        ("integer", 4.0, 4),
        ("number", "2.5", 2.5),
        ("number", "3", 3.0),
        ("number", 2.5, 2.5),
        ("boolean", "true", True),
        ("boolean", "True", True),
        ("boolean", "yes", True),
        ("boolean", "1", True),
        ("boolean", "false", False),
        ("boolean", "no", False),
        ("boolean", "0", False),
        ("boolean", False, False),
        ("string", "3", "3"),
    ],
)
def test_scalars_are_coerced_to_the_declared_type(kind: str, given: Any, expected: Any) -> None:
    result = resolve_parameters(obj({"p": {"type": kind}}), {"p": given})
    assert result == {"p": expected}
    assert type(result["p"]) is type(expected)


@pytest.mark.parametrize(
    ("kind", "given"),
    [
        ("integer", "three"),
        ("integer", "3.5"),
        ("integer", 3.5),
        ("integer", True),
        ("number", "many"),
        ("number", True),
        ("boolean", "maybe"),
        ("boolean", 2),
        ("string", 3),
    ],
)
def test_bad_coercion_is_a_render_error_naming_parameter_type_and_value(
    kind: str, given: Any
) -> None:
    with pytest.raises(RenderError) as caught:
        resolve_parameters(obj({"p": {"type": kind}}), {"p": given})
    assert str(caught.value) == f"parameters.p: expected {kind}, got {given!r}"


def test_enum_accepts_an_allowed_value_after_coercion() -> None:
    schema = obj({"level": {"type": "integer", "enum": [1, 2, 3]}})
    assert resolve_parameters(schema, {"level": "2"}) == {"level": 2}


def test_enum_rejects_a_value_not_listed() -> None:
    schema = obj({"env": {"type": "string", "enum": ["dev", "prod"]}})
    with pytest.raises(RenderError) as caught:
        resolve_parameters(schema, {"env": "qa"})
    assert str(caught.value) == "parameters.env: 'qa' is not one of ['dev', 'prod']"


def test_enum_applies_to_the_default_too() -> None:
    schema = obj({"env": {"type": "string", "enum": ["dev"], "default": "prod"}})
    with pytest.raises(RenderError, match="is not one of"):
        resolve_parameters(schema, {})


def test_array_items_are_coerced_one_by_one() -> None:
    schema = obj({"ports": {"type": "array", "items": {"type": "integer"}}})
    assert resolve_parameters(schema, {"ports": ["80", 443]}) == {"ports": [80, 443]}


def test_array_of_objects_gets_item_defaults() -> None:
    item = obj({"name": {"type": "string"}, "size": {"type": "integer", "default": 1}})
    schema = obj({"disks": {"type": "array", "items": item}})
    assert resolve_parameters(schema, {"disks": [{"name": "a"}, {"name": "b", "size": "9"}]}) == {
        "disks": [{"name": "a", "size": 1}, {"name": "b", "size": 9}]
    }


def test_array_item_error_names_its_index() -> None:
    schema = obj({"ports": {"type": "array", "items": {"type": "integer"}}})
    with pytest.raises(RenderError, match=r"^parameters\.ports\[1\]: expected integer, got 'x'"):
        resolve_parameters(schema, {"ports": ["80", "x"]})


def test_array_given_a_non_list_is_a_render_error() -> None:
    schema = obj({"ports": {"type": "array", "items": {"type": "integer"}}})
    with pytest.raises(RenderError, match=r"^parameters\.ports: expected a list, got '80'"):
        resolve_parameters(schema, {"ports": "80"})


def test_array_default_is_used_when_absent() -> None:
    schema = obj({"tags": {"type": "array", "items": {"type": "string"}, "default": ["a"]}})
    assert resolve_parameters(schema, {}) == {"tags": ["a"]}


def test_object_given_a_non_object_is_a_render_error() -> None:
    schema = obj({"git": obj({"url": {"type": "string"}})})
    with pytest.raises(RenderError, match=r"^parameters\.git: expected an object, got 'x'"):
        resolve_parameters(schema, {"git": "x"})


def test_resolving_does_not_mutate_the_given_parameters() -> None:
    given = {"n": "3", "git": {}}
    schema = obj({"n": {"type": "integer"}, "git": obj({"b": {"type": "string", "default": "m"}})})
    resolve_parameters(schema, given)
    assert given == {"n": "3", "git": {}}


def test_a_number_is_a_float_however_it_was_given() -> None:
    schema = {"type": "object", "properties": {"ratio": {"type": "number"}}}
    for given in (3, "3", 3.0):
        resolved = resolve_parameters(schema, {"ratio": given})
        assert resolved == {"ratio": 3.0} and type(resolved["ratio"]) is float
