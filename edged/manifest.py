"""A model's manifest, declared once.

A manifest is declared once, with Pydantic (:mod:`edged.schema`): each field's type
carries its rule (a pattern, a range, a closed set of values), and the ``/api/models``
bodies (:mod:`edged.http.node`) are declared with the same field types, so the
/openapi.json document, the request check and the manifest check cannot disagree.

:class:`Manifest` is a Pydantic *dataclass* rather than a ``BaseModel``, to keep the
dataclass semantics edged relies on: ``dataclasses.replace`` (an update is a replaced
manifest), ``asdict`` and a ``cached_property`` for the digest. It is validated whenever
it is made (from a stored file, :meth:`Manifest.from_dict`; from a request; by
``replace``), and a bad value raises :class:`InvalidRequest` naming its field, as a
request body's does (``price.request``, ``datanets[0]``, ``options.min_p``). Validation
is strict, with two allowances: JSON arrays become the tuples a manifest holds, and a
whole number in a float field stays an int (the digest encodes ``1`` and ``1.0``
differently). :class:`Price` is a frozen ``BaseModel``, because in strict mode a Pydantic
dataclass accepts only an instance of a nested dataclass, not the JSON object a file or
request holds. ``options``, ``lineage`` and ``influence_layer`` are validated as the
TypedDicts below and held (and typed for the rest of edged) as plain dicts.

The digest of every manifest is what it was before this declaration (receipts name it;
tests/edged/test_manifest_digests.py pins it).

Why one module of ~400 lines: the field types, the nested declarations (price, options,
lineage, influence layer) and the manifest made of them are one declaration.
"""


from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, ClassVar, Literal, NotRequired, TypeVar, cast, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    with_config,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import CoreSchema
from typing_extensions import TypedDict

from attribution.commitments import digest as canonical_digest
from edged.errors import InvalidRequest
from edged.schema import (
    Body,
    invalid,
    validation_error,  # the one ValidationError -> 400
)

T = TypeVar("T")

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}[a-z0-9]$|^[a-z0-9]$")
NAME_RULE = ("names are 1-64 characters of a-z, 0-9, '.', '_' and '-', starting and ending "
             "with a letter or digit")
DIGEST_RULE = "a digest is sha256:<64 lowercase hex digits>"
MAX_PRICE = 2**40  # base units; keeps every fee far inside the receipt's 64-bit integers
MAX_GPUS = 16  # llama.cpp's llama_max_devices()
MAX_CARD_CHARS = 8192  # a model card: what the model is for, how it was made
MAX_TRAINED_ON = 64  # training datanets one lineage names
# A request body's rules (strict JSON types, unknown fields refused, input never echoed
# in errors); frozen is set by the dataclass decorator.
CONFIG = cast(ConfigDict, {key: value for key, value in Body.model_config.items()
                           if key != "frozen"})


# -- the building blocks of the declaration ----------------------------------------------

def _says(rule: str) -> WrapValidator:
    """Any failure of the type before it reported as ``rule``: one readable message in
    place of a regular expression or the branches of a union."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise invalid(rule) from None

    return WrapValidator(check)


def _keep_whole_numbers(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A float field that leaves an int an int (checked as a float): the manifest digest
    encodes ``0`` and ``0.0`` differently, and a stored manifest's digest must not move."""
    checked = handler(value)
    return value if type(value) is int else checked


def _as_tuple(value: Any) -> Any:
    """A JSON array as the tuple a manifest holds (strict mode takes tuples only)."""
    return tuple(value) if isinstance(value, list) else value


def _bare_digest(value: str) -> str:
    return value.removeprefix("sha256:")


def _no_double_dot(value: str) -> str:
    if ".." in value:
        raise invalid(NAME_RULE)
    return value


@dataclass(frozen=True)
class Declared:
    """Validate and document a field as ``shape`` (a TypedDict), while Python code types
    it as the field's own annotation (a plain dict)."""

    shape: Any

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler.generate_schema(self.shape)


Number = WrapValidator(_keep_whole_numbers)

# -- field types, each declared once: the manifest and the /api/models bodies share them --

Name = Annotated[str, Field(pattern=NAME_PATTERN.pattern), AfterValidator(_no_double_dot),
                 _says(NAME_RULE)]
"""A model or datanet name; also a path component, so a strict one."""
DatanetRef = Annotated[str, Field(pattern=NAME_PATTERN.pattern), _says(NAME_RULE)]
"""A datanet a lineage names, perhaps another node's: held to the pattern only, as
lineages always were (stored ones must still load)."""
Digest = Annotated[str, Field(pattern=r"^(sha256:)?[0-9a-f]{64}$"),
                   AfterValidator(_bare_digest), _says(DIGEST_RULE)]
"""A SHA-256, ``<hex>`` or ``sha256:<hex>``; held as the bare lowercase hex."""
Runtime = Literal["llama.cpp", "onnx", "fake"]
ChatFormat = Literal["gemma", "chatml", "none"]
UnmatchedDataTo = Literal["owner", "operator"]  # who gets the data share when no span matches
Owner = Annotated[str, Field(min_length=1, max_length=128, description="payee id"),
                  _says("an owner is a payee id of 1-128 characters")]
ContextLength = Annotated[int, Field(ge=16, le=1 << 20)]
DataSharePpm = Annotated[int, Field(ge=0, le=1_000_000,
                                    description="share of each fee owed to the datanets' "
                                                "contributors, in millionths")]
MaxBatchSize = Annotated[int, Field(ge=1, le=4096)]  # ONNX: dynamic batching, rows per run
BatchDelayUs = Annotated[int, Field(ge=0, le=10**6)]  # ONNX: dynamic batching window
Datanets = Annotated[tuple[Name, ...], BeforeValidator(_as_tuple)]
LabelNames = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
TensorSpecs = Annotated[tuple[dict[str, Any], ...], BeforeValidator(_as_tuple)]
EmbeddingOutput = Annotated[str, Field(min_length=1)]
PriceUnits = Annotated[int, Field(ge=0, le=MAX_PRICE)]
Card = Annotated[str, Field(min_length=1, max_length=MAX_CARD_CHARS, pattern=r"^[^\x00]*$"),
                 _says(f"a model card is text of 1-{MAX_CARD_CHARS} characters")]

RUNTIMES: tuple[str, ...] = get_args(Runtime)  # every runtime a manifest may name
SERVING_RUNTIMES = ("llama.cpp", "onnx")  # what a daemon serves unless told otherwise (fake: tests)
# Built-in chat formats, and "none": a model that serves completions only. A llama.cpp
# model without one uses the chat template in its GGUF (refused at registration if none).


@with_config(CONFIG)
class LlamaOptions(TypedDict, total=False):
    """The llama.cpp options a manifest may set (numbers inclusive)."""

    parallel: Annotated[int, Field(ge=1, le=64)]  # generations at once (else the setting)
    # layers offloaded to a GPU (-1: all; "auto": all that fit)
    n_gpu_layers: Annotated[Annotated[int, Field(ge=-1, le=10_000)] | Literal["auto"],
                            _says('an integer within -1..10000, or "auto"')]
    main_gpu: Annotated[int, Field(ge=0, le=255)]  # the GPU holding an unsplit model
    # share of the model per GPU, e.g. [3, 1]
    tensor_split: Annotated[list[Annotated[float, Field(ge=0, le=1e6), Number]],
                            Field(min_length=1, max_length=MAX_GPUS)]
    n_batch: Annotated[int, Field(ge=1, le=65_536)]  # prompt tokens per decode step
    n_ubatch: Annotated[int, Field(ge=1, le=65_536)]
    flash_attn: bool
    type_k: Annotated[int, Field(ge=0, le=255)]  # ggml type of the KV cache (1: f16, 8: q8_0)
    type_v: Annotated[int, Field(ge=0, le=255)]
    use_mmap: bool
    use_mlock: bool
    repack: bool  # repack weights for the CPU's kernels
    embedding_batch: Annotated[int, Field(ge=1, le=65_536)]
    top_k: Annotated[int, Field(ge=0, le=100_000)]  # sampler defaults of the model
    min_p: Annotated[float, Field(ge=0, le=1), Number]
    repeat_penalty: Annotated[float, Field(ge=0, le=10), Number]


@with_config(CONFIG)
class InfluenceLayer(TypedDict):
    """influence/1: the graph input feeding the final linear layer, and its initializers;
    ``source: found`` when edged found the layer itself."""

    features: str
    weights: str
    bias: str
    source: NotRequired[Literal["found"]]


@with_config(CONFIG)
class TrainedOn(TypedDict):
    """A training datanet, pinned at the state digest the model was trained at."""

    datanet: DatanetRef
    state: Digest


def _each_once(entries: list[TrainedOn]) -> list[TrainedOn]:
    seen: set[tuple[str, str]] = set()
    for number, entry in enumerate(entries):
        key = (entry["datanet"], entry["state"])
        if key in seen:  # the manifest's lineage.trained_on, the one use of this type
            param = f"lineage.trained_on[{number}]"
            raise InvalidRequest(f"{param} names {key[0]}@{key[1][:12]} twice", param=param)
        seen.add(key)
    return entries


@with_config(CONFIG)
class Lineage(TypedDict, total=False):
    """Provenance, every part optional: the base model's weights, the training datanets
    at their state digests, and a model card."""

    base: Digest
    trained_on: Annotated[list[TrainedOn], Field(min_length=1, max_length=MAX_TRAINED_ON),
                          AfterValidator(_each_once)]
    card: Card


@with_config(CONFIG)
class TrainedOnRequest(TypedDict):
    """A training datanet as a request names it: without a state, pinned at the node's
    datanet's current state (:func:`edged.lineage.resolve_lineage`)."""

    datanet: DatanetRef
    state: NotRequired[Digest]


@with_config(CONFIG)
class LineageRequest(TypedDict, total=False):
    """A lineage as a request gives it (see :class:`TrainedOnRequest`)."""

    base: Digest
    trained_on: Annotated[list[TrainedOnRequest],
                          Field(min_length=1, max_length=MAX_TRAINED_ON)]
    card: Card


Options = Annotated[dict[str, Any], Declared(LlamaOptions)]
Layer = Annotated[dict[str, str], Declared(InfluenceLayer)]


def _edged_errors(cls: type[T]) -> type[T]:
    """``cls(...)`` raises edged's 400 naming the failing field, not a ValidationError."""
    init = cls.__init__

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise validation_error(cast(Any, cls), kwargs, exc) from None

    setattr(cls, "__init__", checked_init)  # noqa: B010 (mypy refuses assigning a method)
    return cls


_NAME: TypeAdapter[str] = TypeAdapter(Name, config=CONFIG)
_DIGEST: TypeAdapter[str] = TypeAdapter(Digest, config=CONFIG)


def validate_name(name: str) -> str:
    try:
        return _NAME.validate_python(name)
    except ValidationError:
        raise InvalidRequest(NAME_RULE[:1].upper() + NAME_RULE[1:], param="name") from None


def validate_digest(digest: str) -> str:
    """Accept ``<hex>`` or ``sha256:<hex>``; return the bare lowercase hex."""
    try:
        return _DIGEST.validate_python(digest)
    except ValidationError:
        raise InvalidRequest(DIGEST_RULE, param="digest") from None


@_edged_errors
class Price(Body):
    """Fee in integer base units: per request, and per 1,000 input / output tokens."""

    request: PriceUnits = 0
    input_per_1k: PriceUnits = 0
    output_per_1k: PriceUnits = 0
    per_row: PriceUnits = 0  # predictions: per input row

    def fee(self, input_units: int, output_units: int, *, rows: int = 0) -> int:
        """Request price, per-1k-token parts (each rounded up, so a short request is never
        free by truncation) and, for predictions, ``per_row`` times the rows."""
        return (self.request + -(-input_units * self.input_per_1k // 1000)
                + -(-output_units * self.output_per_1k // 1000) + rows * self.per_row)


@_edged_errors
@pydantic_dataclass(frozen=True, config=CONFIG)
class Manifest:
    endpoint: ClassVar[str] = "a manifest"  # named in "'x' is not a parameter of ..."

    name: Name
    runtime: Runtime
    weights: Digest  # sha256 hex of the weights file
    size: int
    owner: Owner
    price: Price = field(default_factory=Price)
    chat_format: ChatFormat | None = None
    context_length: ContextLength = 2048
    datanets: Datanets = ()
    data_share_ppm: DataSharePpm = 0  # share of each fee owed to the datanets' contributors
    unmatched_data_to: UnmatchedDataTo = "owner"  # who gets the data share when no span matches
    # Tensor models (ONNX): dynamic batching, graph metadata, optional labels.
    max_batch_size: MaxBatchSize = 32
    batch_delay_us: BatchDelayUs = 2000
    inputs: TensorSpecs = ()  # [{"name", "datatype", "shape"}]
    outputs: TensorSpecs = ()
    label_names: LabelNames = ()
    embedding_output: EmbeddingOutput | None = None
    # Text-embedding models: sha256 hex of a Hugging Face tokenizer.json blob.
    tokenizer: Digest | None = None
    influence_layer: Layer | None = None  # influence/1 (see InfluenceLayer)
    created: int = 0  # unix seconds
    # llama.cpp models: engine options (see LlamaOptions), e.g. {"parallel": 8}
    options: Options = field(default_factory=dict)
    # Provenance (see Lineage): {"base", "trained_on": [{"datanet", "state"}], "card"}
    lineage: Annotated[dict[str, Any], Declared(Lineage)] = field(default_factory=dict)
    # Federation: False keeps this model from being advertised to or served for peers.
    federate: bool = True

    @field_validator("options")
    @classmethod
    def _options_are_for_llama(cls, options: dict[str, Any],
                               info: ValidationInfo) -> dict[str, Any]:
        if options and info.data.get("runtime", "llama.cpp") != "llama.cpp":
            raise invalid("options are for llama.cpp models")
        return options

    @field_validator("data_share_ppm")
    @classmethod
    def _a_share_needs_datanets(cls, share: int, info: ValidationInfo) -> int:
        runtime = info.data.get("runtime")
        if share and runtime not in (None, "onnx") and not info.data.get("datanets"):
            raise invalid("a data share needs a datanet (or, for ONNX models, bound examples)")
        return share

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["price"] = self.price.model_dump()
        data["datanets"] = list(self.datanets)
        data["inputs"] = [dict(item) for item in self.inputs]
        data["outputs"] = [dict(item) for item in self.outputs]
        data["label_names"] = list(self.label_names)
        if self.tokenizer is None:  # absent, so manifests without one keep their digests
            del data["tokenizer"]
        if not self.options:  # likewise
            del data["options"]
        if not self.lineage:  # likewise
            del data["lineage"]
        if self.federate:  # likewise: only the opt-out is written
            del data["federate"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """A stored manifest. Fields this edged does not know (written by an older one)
        are ignored, as they always were."""
        if not isinstance(data, dict):
            raise InvalidRequest("a manifest is a JSON object")
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def digest(self) -> bytes:
        """SHA-256 of the canonical manifest: what receipts name (computed once)."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> bytes:
        data = self.to_dict()
        if "options" in data:  # canonical encoding has no floats: name them by repr
            data["options"] = _floats_as_text(data["options"])
        return canonical_digest(data)

    def public_view(self) -> dict[str, Any]:
        return {**self.to_dict(), "weights": "sha256:" + self.weights,
                "manifest_digest": "sha256:" + self.digest().hex()}


def _floats_as_text(value: Any) -> Any:
    """``value`` with every float replaced by its shortest round-trip text (``0.05``)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {key: _floats_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_floats_as_text(item) for item in value]
    return value
