"""Structured outputs: an OpenAI ``response_format`` (or Ollama's ``format``) as the GBNF
grammar the sampler enforces.

``{"type": "json_object"}`` is any JSON object; ``{"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}`` is compiled with llama-cpp-python's JSON-schema-to-GBNF
converter. That converter silently drops keywords it cannot express (``minimum``,
``not``, ``uniqueItems``, ...), which would let through output the client's schema
forbids: every keyword is checked first, and one the grammar cannot enforce is a 400
naming it. Remote ``$ref`` s are refused too (the converter would fetch them), and
repetition bounds are capped so a schema cannot make a grammar of millions of rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from edged.errors import InvalidRequest, Unsupported

# What the converter turns into grammar rules.
ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "enum", "const",
    "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions"})
# What only describes a schema and constrains nothing.
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly"})
FORMATS = frozenset({"date", "time", "date-time", "uuid"})
MAX_REPEAT = 1000  # largest minItems/maxItems/minLength/maxLength a grammar spells out
# Keywords whose value is a map of names to schemas, or a list of schemas.
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def grammar_for(response_format: Any, param: str = "response_format") -> str | None:
    """The GBNF for a ``response_format`` value; None for plain text. Raises
    :class:`InvalidRequest` (naming ``param``) for a malformed value or a keyword the
    grammar cannot enforce."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"),
                                                               str):
        raise InvalidRequest(f"'{param}' must be an object with a 'type'", param=param)
    kind = response_format["type"]
    if kind == "text":
        return None
    grammar = _converter()
    if kind == "json_object":
        return str(grammar.JSON_GBNF)
    if kind != "json_schema":
        raise InvalidRequest(f"'{param}.type' must be text, json_object or json_schema",
                             param=param)
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidRequest(f"'{param}.json_schema' must be an object with a 'name'",
                             param=param)
    schema = spec.get("schema", {})
    return schema_grammar(schema, param)


def schema_grammar(schema: Any, param: str) -> str:
    """The GBNF for one JSON schema (checked as :func:`grammar_for` says)."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"the schema in '{param}' must be an object", param=param)
    for path, keyword, value in _keywords(schema, "#"):
        if keyword not in ENFORCED and keyword not in ANNOTATIONS:
            raise InvalidRequest(f"the schema keyword {keyword!r} (at {path}) cannot be "
                                 f"enforced by edged's grammar", param=param)
        if keyword == "format" and value not in FORMATS:
            raise InvalidRequest(f"the schema format {value!r} (at {path}) cannot be "
                                 f"enforced; known: {sorted(FORMATS)}", param=param)
        if keyword == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise InvalidRequest(f"only local $ref ('#/...') are allowed (at {path})",
                                 param=param)
        if keyword in ("minItems", "maxItems", "minLength", "maxLength") and not (
                isinstance(value, int) and not isinstance(value, bool)
                and 0 <= value <= MAX_REPEAT):
            raise InvalidRequest(f"{keyword} (at {path}) must be an integer within "
                                 f"0..{MAX_REPEAT}", param=param)
    try:
        return str(_converter().json_schema_to_gbnf(json.dumps(schema)))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError) as exc:
        raise InvalidRequest(f"the schema in '{param}' cannot be compiled to a grammar: "
                             f"{type(exc).__name__}", param=param) from None


def _keywords(schema: dict[str, Any], path: str) -> Iterator[tuple[str, str, Any]]:
    """Every (path, keyword, value) of a schema and its subschemas."""
    for keyword, value in schema.items():
        yield path, keyword, value
        if keyword in ANNOTATIONS or keyword in ("enum", "const"):
            continue  # values, not schemas
        if keyword in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                if isinstance(sub, dict):
                    yield from _keywords(sub, f"{path}/{keyword}/{name}")
        elif keyword in _SCHEMA_LISTS and isinstance(value, list):
            for index, sub in enumerate(value):
                if isinstance(sub, dict):
                    yield from _keywords(sub, f"{path}/{keyword}/{index}")
        elif keyword in ("items", "additionalProperties") and isinstance(value, dict):
            yield from _keywords(value, f"{path}/{keyword}")


def _converter() -> Any:
    try:
        from llama_cpp import llama_grammar
    except ImportError:
        raise Unsupported("structured outputs need llama-cpp-python: pip install "
                          "'edged[llama]'", param="response_format") from None
    return llama_grammar
