"""response_format -> grammar: what is enforced, and what is refused naming the keyword."""

from __future__ import annotations

from typing import Any

import pytest
from llama_cpp.llama_grammar import JSON_GBNF
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel

from edged.errors import InvalidRequest
from edged.structured import MAX_REPEAT, grammar_for


class Pet(BaseModel):
    name: str
    legs: int
    tags: list[str]


class Owner(BaseModel):
    pets: list[Pet]
    nickname: str | None


def as_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema,
                                                   "strict": True}}


def test_text_and_json_object() -> None:
    assert grammar_for(None) is None
    assert grammar_for({"type": "text"}) is None
    assert grammar_for({"type": "json_object"}) == JSON_GBNF


def test_the_official_clients_pydantic_schemas_compile() -> None:
    """What ``chat.completions.parse(response_format=Model)`` sends: $defs, $ref,
    anyOf with null, additionalProperties false, titles."""
    schema = to_strict_json_schema(Owner)
    assert "$defs" in schema
    grammar = grammar_for(as_format(schema))
    assert grammar is not None and "root ::=" in grammar and "pets" in grammar


@pytest.mark.parametrize(("schema", "named"), [
    ({"type": "integer", "minimum": 3}, "minimum"),
    ({"type": "object", "properties": {"a": {"type": "number", "multipleOf": 2}}},
     "multipleOf"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"anyOf": [{"type": "string", "format": "email"}]}, "email"),
    ({"$ref": "https://example.org/schema.json"}, "$ref"),
    ({"type": "array", "maxItems": MAX_REPEAT + 1}, "maxItems"),
    ({"type": "string", "minLength": -1}, "minLength"),
])
def test_keywords_the_grammar_cannot_enforce_are_refused_by_name(
        schema: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        grammar_for(as_format(schema))
    assert refused.value.param == "response_format"
    assert named in str(refused.value)


@pytest.mark.parametrize("value", [
    "json", {"type": "yaml"}, {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"schema": {}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
])
def test_malformed_formats_are_400(value: Any) -> None:
    with pytest.raises(InvalidRequest) as refused:
        grammar_for(value)
    assert refused.value.param == "response_format"
