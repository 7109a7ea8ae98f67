"""The one schema source: request bodies, query parameters and manifests are Pydantic v2
models, declared once, and that declaration drives three things:

- validation (:func:`validated`), in strict mode for JSON (``true`` is not ``1``, ``"1"``
  is not ``1``; unknown fields are refused) and in lax mode for query strings, which are
  text by nature;
- the error: the first failure becomes :class:`~edged.errors.InvalidRequest` (or
  :class:`~edged.errors.UnsupportedParameter`) whose ``param`` is the failing location,
  written ``messages[0].content``;
- the OpenAPI 3.1 document (:mod:`edged.http.openapi`), via :func:`json_schema`.

Why Pydantic rather than msgspec: edged's bodies are small and parsed once, so speed is
not the constraint; what matters is an exact error location for every failure, custom
rules beside the types (refused fields), and a JSON Schema generator whose output
OpenAPI 3.1 and schemathesis read as they are. Pydantic does all three, and the OpenAI
client and schemathesis need it anyway. Errors never echo the input
(``hide_input_in_errors``, and a discriminator's tag is not quoted back): a prompt must
not reach a log through an error message. Text that is not valid Unicode (a lone
surrogate, which JSON's escapes can spell) is refused for the whole body before any
model sees it (:func:`edged.http.common.json_body`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
)
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from edged.errors import InvalidRequest, UnsupportedParameter

M = TypeVar("M", bound=BaseModel)
MAX_SHOWN = 64  # characters of an unknown field's name repeated in an error
_UNSUPPORTED = "unsupported"  # the error type of a refused field or value


class Body(BaseModel):
    """A JSON request body (or a manifest): strict types, unknown fields refused,
    immutable once validated."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False,
                              hide_input_in_errors=True)
    endpoint: ClassVar[str] = "this endpoint"  # named in "'x' is not a parameter of ..."


class Query(BaseModel):
    """A request's query parameters: text converted to the declared types; parameters
    edged does not read are ignored, as HTTP servers do."""

    model_config = ConfigDict(strict=False, extra="ignore", frozen=True, allow_inf_nan=False,
                              hide_input_in_errors=True)


def validated(model: type[M], data: Any, *, strict: bool | None = None) -> M:
    """``data`` as a ``model``, or the first failure as an edged error naming its param."""
    if isinstance(model, type) and issubclass(model, Body) and not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise validation_error(model, data, exc) from None


def param_name(loc: tuple[int | str, ...], data: Any, *, missing: bool = False) -> str:
    """A validation location as a param: ``("messages", 0, "content")`` is
    ``messages[0].content``; long unknown names are cut. Pydantic's locations also name
    the member of a union it tried (``str``, ``list[str]``) and a dict key's check
    (``[key]``); the ``data`` validated tells those from the body's own keys."""
    text, here = "", data
    for index, part in enumerate(loc):
        in_body = isinstance(here, dict) and part in here or (
            isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here))
        if in_body:
            here = here[part]  # type: ignore[index]
        elif not (missing and index == len(loc) - 1):
            continue  # not a place in the body; a missing key (the last part) is kept
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if len(part) <= MAX_SHOWN else part[:MAX_SHOWN - 3] + "..."
            text += f".{shown}" if text else shown
    return text


def validation_error(model: type[BaseModel], data: Any, exc: ValidationError) -> Exception:
    """The edged error for a failed validation of ``data`` against ``model``."""
    errors = exc.errors(include_url=False, include_input=False)
    # Unknown and refused fields first, in the body's order (what a client sent that
    # edged would not honour), then type and range failures in declaration order.
    order = list(data) if isinstance(data, dict) else []
    refusals = [e for e in errors if e["type"] in ("extra_forbidden", _UNSUPPORTED)]
    refusals.sort(key=lambda e: order.index(e["loc"][0]) if e["loc"] and e["loc"][0] in order
                  else len(order))
    if refusals:
        error = refusals[0]
    else:  # the first field that failed; within it, in a union, the member the value's
        # type matched (a too-short list says more than "input should be a valid string"),
        # then the deepest place
        first = [e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]]
        error = max(first, key=lambda e: (not e["type"].endswith("_type"), len(e["loc"])))
    param = param_name(error["loc"], data, missing=error["type"] == "missing") or None
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        # Pydantic's message quotes the tag the client sent: never repeat client text.
        tag = str(error.get("ctx", {}).get("discriminator", "")).strip("'")
        expected = error.get("ctx", {}).get("expected_tags")
        param = f"{param}.{tag}" if param else tag
        return InvalidRequest(f"'{param}' must be one of {expected}" if expected else
                              f"'{param}' is required", param=param)
    if error["type"] == "extra_forbidden":
        endpoint = getattr(model, "endpoint", "this endpoint") if len(error["loc"]) == 1 \
            else "this object"
        return UnsupportedParameter(f"'{param}' is not a parameter of {endpoint}",
                                    param=param)
    if error["type"] == _UNSUPPORTED:
        return UnsupportedParameter(f"'{param}' is {error['msg']}", param=param)
    if error["type"] == "missing":
        return InvalidRequest(f"'{param}' is required", param=param)
    if param is None:
        return InvalidRequest(error["msg"])
    message = error["msg"]
    return InvalidRequest(f"'{param}': {message[:1].lower()}{message[1:]}", param=param)


def refuse(why: str) -> PydanticCustomError:
    """The error a validator raises for a field or value edged does not implement: 400
    ``UnsupportedParameter`` reading "'<param>' is <why>"."""
    return PydanticCustomError(_UNSUPPORTED, why)


def invalid(message: str) -> PydanticCustomError:
    """The error a validator raises for a value that breaks a rule the type cannot say."""
    return PydanticCustomError("invalid", message)




@dataclass(frozen=True)
class Refused:
    """Marks a field edged does not implement, in its annotation
    (``Annotated[Any, Refused("why")] = None``): ``null``, or the ``neutral`` value that
    asks for exactly what edged does anyway (``tools: []``), and nothing else; any other
    value is a 400 ``UnsupportedParameter`` reading "'<field>' is not supported: <why>"."""

    why: str
    neutral: Callable[[Any], bool] | None = None
    neutral_schema: Mapping[str, Any] | None = None  # the neutral value, for the document

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        allowed = [{"type": "null"}] + ([dict(self.neutral_schema)] if self.neutral_schema
                                        else [])
        return {"anyOf": allowed, "description": f"refused: {self.why}"}

    def _check(self, value: Any) -> Any:
        if value is not None and (self.neutral is None or not self.neutral(value)):
            raise refuse(f"not supported: {self.why}")
        return value


def ignored(why: str) -> Any:
    """Field metadata for a field accepted and type-checked, and without effect
    (``Annotated[str, ignored("why")]``); ``why`` says why that is honest, in the OpenAPI
    document too."""
    return Field(description=f"accepted without effect: {why}")


def json_schema(model: type[BaseModel], definitions: dict[str, Any]) -> dict[str, Any]:
    """``model``'s JSON schema for an OpenAPI 3.1 document; nested models are added to
    ``definitions`` (the document's ``components.schemas``) and referenced there."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                     mode="validation")
    for name, definition in schema.pop("$defs", {}).items():
        definitions[name] = definition
    return schema


def query_parameters(model: type[Query]) -> list[dict[str, Any]]:
    """``model``'s fields as OpenAPI query parameters."""
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "schema": field}
            for name, field in schema.get("properties", {}).items()]


def refused_fields(model: type[BaseModel]) -> list[str]:
    """The fields ``model`` declares :class:`Refused`, in declaration order."""
    return [name for name, info in model.model_fields.items()
            if any(isinstance(item, Refused) for item in info.metadata)]


__all__ = ["Body", "Query", "Refused", "ignored", "invalid", "json_schema",
           "param_name", "query_parameters", "refuse", "refused_fields", "validated",
           "validation_error"]
