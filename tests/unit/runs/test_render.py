"""``${...}`` rendering: templates split correctly, values keep their types, errors say where."""

from __future__ import annotations

from typing import Any

import pytest

from workflowplane.runs.render import (
    Renderer,
    RenderError,
    RunContext,
    SecretStoreMissing,
    evaluate,
    split_template,
)

PARAMETERS: dict[str, Any] = {
    "count": 3,
    "name": "build",
    "flag": True,
    "items": [1, 2],
    "git": {"branch": "main"},
}


def renderer(secret_store: str = "vault", parameters: dict[str, Any] | None = None) -> Renderer:
    context = RunContext(
        namespace="team",
        run_name="r1",
        labels={"app": "web"},
        parameters=PARAMETERS if parameters is None else parameters,
        plane_id="p1",
        secret_store=secret_store,
    )
    return Renderer(context, "ClusterWorkflowPlane/default has no spec.secretStoreRef")


# split_template


def test_split_plain_text_is_one_literal() -> None:
    assert split_template("hello", "w") == ["hello"]


def test_split_empty_string_has_no_pieces() -> None:
    assert split_template("", "w") == []


def test_split_separates_literals_and_stripped_expressions_in_order() -> None:
    assert split_template("a-${ x }-b${y}", "w") == ["a-", ("x",), "-b", ("y",)]


def test_split_double_dollar_is_a_literal_dollar_brace() -> None:
    assert split_template("$${x} and ${y}", "w") == ["${x} and ", ("y",)]


def test_split_keeps_nested_braces_inside_an_expression() -> None:
    assert split_template("${ {'a': {'b': 1}}['a'] }!", "w") == [("{'a': {'b': 1}}['a']",), "!"]


def test_split_ignores_closing_brace_inside_quotes() -> None:
    assert split_template("""${"}" + '}'}""", "w") == [("""\"}" + '}'""",)]


def test_split_honours_escaped_quote_inside_a_string() -> None:
    assert split_template(r'${"a\"}" + x}', "w") == [(r'"a\"}" + x',)]


@pytest.mark.parametrize("text", ["${x", "a ${'}'", "${ {'a': 1} "])
def test_split_unterminated_expression_is_a_render_error_naming_where(text: str) -> None:
    with pytest.raises(RenderError, match=r"^spec\.args: unterminated"):
        split_template(text, "spec.args")


# render: types and interpolation


def test_whole_string_expression_keeps_an_integer() -> None:
    assert renderer().render("${parameters.count}", "w") == 3


def test_whole_string_expression_keeps_a_bool() -> None:
    assert renderer().render("${parameters.flag}", "w") is True


def test_whole_string_expression_keeps_a_list_and_a_map() -> None:
    r = renderer()
    assert r.render("${parameters.items}", "w") == [1, 2]
    assert r.render("${parameters.git}", "w") == {"branch": "main"}


def test_whole_string_expression_with_surrounding_spaces_inside_braces_keeps_type() -> None:
    assert renderer().render("${  parameters.count + 1  }", "w") == 4


def test_text_around_an_expression_makes_a_string() -> None:
    assert renderer().render("n=${parameters.count}", "w") == "n=3"
    assert renderer().render(" ${parameters.count}", "w") == " 3"


def test_mixed_string_interpolates_every_expression() -> None:
    rendered = renderer().render("${parameters.name}-${metadata.workflowRunName}", "w")
    assert rendered == "build-r1"


def test_mixed_string_writes_bools_null_and_collections_as_compact_json() -> None:
    r = renderer()
    assert r.render("f=${parameters.flag}", "w") == "f=true"
    assert r.render("n=${null}", "w") == "n=null"
    assert r.render("l=${parameters.items}", "w") == "l=[1,2]"
    assert r.render("m=${parameters.git}", "w") == 'm={"branch":"main"}'


def test_double_dollar_renders_a_literal_expression_untouched() -> None:
    assert renderer().render("$${parameters.count}", "w") == "${parameters.count}"
    assert renderer().render("$${a} ${parameters.count}", "w") == "${a} 3"


def test_expression_with_nested_braces_and_quoted_brace_renders() -> None:
    r = renderer()
    assert r.render("${ {'k': parameters.count}['k'] }", "w") == 3
    assert r.render("${'}' + parameters.name}", "w") == "}build"


def test_context_variables_are_exposed() -> None:
    r = renderer()
    assert r.render("${metadata.namespaceName}", "w") == "team"
    assert r.render("${metadata.workflowRunName}", "w") == "r1"
    assert r.render("${metadata.namespace}", "w") == "workflows-team"
    assert r.render("${metadata.labels.app}", "w") == "web"
    assert r.render("${workflowplane.planeID}", "w") == "p1"
    assert r.render("${workflowplane.secretStore}", "w") == "vault"


def test_render_walks_maps_and_lists_and_leaves_other_values_alone() -> None:
    template = {
        "a": ["${parameters.count}", "x-${parameters.name}", 7, None],
        "b": {"c": "${parameters.flag}", "d": 1.5, "e": False},
    }
    assert renderer().render(template, "t") == {
        "a": [3, "x-build", 7, None],
        "b": {"c": True, "d": 1.5, "e": False},
    }


def test_render_does_not_mutate_the_template() -> None:
    template = {"a": ["${parameters.count}"], "b": {"c": "${parameters.name}"}}
    renderer().render(template, "t")
    assert template == {"a": ["${parameters.count}"], "b": {"c": "${parameters.name}"}}


# render: errors name the path and the expression


def test_unknown_key_error_names_the_path_and_expression() -> None:
    with pytest.raises(RenderError) as caught:
        renderer().render({"spec": {"args": ["ok", "${parameters.nope}"]}}, "runTemplate")
    message = str(caught.value)
    assert "runTemplate.spec.args[1]" in message
    assert "${parameters.nope}" in message
    assert "nope" in message.split("${parameters.nope}", 1)[1]


def test_undefined_variable_error_names_the_path_and_expression() -> None:
    with pytest.raises(RenderError) as caught:
        renderer().render("x ${nosuch.thing}", "runTemplate.metadata.name")
    assert "runTemplate.metadata.name" in str(caught.value)
    assert "${nosuch.thing}" in str(caught.value)


def test_bad_cel_syntax_error_names_the_path_and_expression() -> None:
    with pytest.raises(RenderError) as caught:
        renderer().render({"a": "${1 +}"}, "resources[cm].template")
    message = str(caught.value)
    assert message.startswith("resources[cm].template.a: ${1 +} is not valid CEL")
    assert "\n" not in message


def test_type_error_names_the_path_and_expression() -> None:
    with pytest.raises(RenderError) as caught:
        renderer().render(["${parameters.count + 'a'}"], "spec.list")
    message = str(caught.value)
    assert message.startswith("spec.list[0]: ${parameters.count + 'a'}: ")
    assert "\n" not in message


def test_render_error_is_not_a_secret_store_error() -> None:
    with pytest.raises(RenderError) as caught:
        renderer(secret_store="").render("${parameters.nope}", "w")
    assert not isinstance(caught.value, SecretStoreMissing)


# secret store


def test_secret_store_reference_without_a_store_raises_secret_store_missing() -> None:
    with pytest.raises(SecretStoreMissing) as caught:
        renderer(secret_store="").render(
            {"spec": {"secretStoreRef": {"name": "${workflowplane.secretStore}"}}}, "resources[s]"
        )
    message = str(caught.value)
    assert "resources[s].spec.secretStoreRef.name" in message
    assert "${workflowplane.secretStore}" in message
    assert "ClusterWorkflowPlane/default has no spec.secretStoreRef" in message


def test_secret_store_missing_is_a_render_error() -> None:
    assert issubclass(SecretStoreMissing, RenderError)


def test_secret_store_reference_inside_a_mixed_string_also_needs_the_store() -> None:
    with pytest.raises(SecretStoreMissing):
        renderer(secret_store="").render("store-${workflowplane.secretStore}", "w")


def test_secret_store_reference_with_a_store_renders_its_name() -> None:
    rendered = renderer(secret_store="vault").render("store-${workflowplane.secretStore}", "w")
    assert rendered == "store-vault"


def test_expressions_not_mentioning_the_store_render_without_one() -> None:
    assert renderer(secret_store="").render("${workflowplane.planeID}", "w") == "p1"


def test_condition_on_secret_store_without_a_store_raises_secret_store_missing() -> None:
    with pytest.raises(SecretStoreMissing):
        renderer(secret_store="").condition("${workflowplane.secretStore != ''}", "w")


# condition


@pytest.mark.parametrize(
    "text",
    [
        "${parameters.flag}",
        "parameters.flag",
        "  ${parameters.count > 2}  ",
        "parameters.count == 3",
    ],
)
def test_condition_accepts_an_expression_with_or_without_dollar_braces(text: str) -> None:
    assert renderer().condition(text, "w") is True


@pytest.mark.parametrize("text", ["${parameters.count > 5}", "parameters.name == 'other'"])
def test_condition_returns_false_when_the_expression_is_false(text: str) -> None:
    assert renderer().condition(text, "w") is False


@pytest.mark.parametrize(
    ("text", "expression"),
    [("${parameters.count}", "parameters.count"), ("parameters.name", "parameters.name")],
)
def test_condition_with_a_non_bool_result_is_a_render_error(text: str, expression: str) -> None:
    with pytest.raises(RenderError) as caught:
        renderer().condition(text, "resources[cm].includeWhen")
    message = str(caught.value)
    assert message.startswith("resources[cm].includeWhen: ")
    assert f"${{{expression}}}" in message
    assert "must be true or false" in message


def test_condition_error_names_where_and_expression() -> None:
    with pytest.raises(RenderError) as caught:
        renderer().condition("${parameters.missing}", "resources[x].includeWhen")
    assert "resources[x].includeWhen" in str(caught.value)
    assert "${parameters.missing}" in str(caught.value)


def test_secret_store_is_missing_also_when_indexed_by_name() -> None:
    with pytest.raises(SecretStoreMissing, match=r"has no spec\.secretStoreRef"):
        renderer(secret_store="").render("${workflowplane['secretStore']}", "r")


def test_a_condition_made_of_two_expressions_says_how_to_combine_them() -> None:
    with pytest.raises(RenderError, match=r"must be one \$\{\.\.\.\} expression"):
        renderer().condition("${parameters.flag} && ${parameters.flag}", "resources[x].includeWhen")


def test_an_oversized_expression_is_refused_before_it_is_compiled() -> None:
    bomb = "[" + ",".join(["1"] * 1500) + "].size()"
    with pytest.raises(RenderError, match=r"spec\.x: an expression of \d+ characters is over"):
        evaluate(bomb, {}, "spec.x")
