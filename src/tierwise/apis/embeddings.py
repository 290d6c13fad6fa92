"""``POST /v1/embeddings`` requests: which model, what is embedded, and what it is estimated to cost (pure).

OpenAI's request shape (platform.openai.com/docs/api-reference/embeddings/create): ``input`` is a string, an array
of strings, an array of token ids or an array of such arrays; ``model``; optional ``encoding_format``
(float/base64), ``dimensions`` and ``user``, which are passed on. The model must be one of ``embeddings.models``
(``auto`` or no model: ``embeddings.default``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tierwise.apis.embeddings_config import EmbeddingsConfig
from tierwise.apis.messages import clip
from tierwise.cost import count_text_tokens
from tierwise.errors import APIError, invalid
from tierwise.pricing import PriceBook, RequestEstimator
from tierwise.requests import MAX_NAME_CHARS
from tierwise.types import JSON, Usage

_KNOWN = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


@dataclass(slots=True)
class EmbeddingRequest:
    model: str  # the tierwise model key
    texts: list[str]  # string inputs (token counts estimated with the model's encoding)
    given_tokens: int  # inputs sent as token ids: their count is exact
    count: int  # number of inputs (one vector each)


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _token_ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(type(t) is int and t >= 0 for t in v)


def _inputs(value: Any, limit: int) -> tuple[list[str], int, int]:
    if isinstance(value, str):
        value = [value]
    elif _token_ids(value):
        return [], len(value), 1
    if not isinstance(value, list) or not value:
        raise invalid(f"'input' must be a string, an array of strings or an array of token arrays, got "
                      f"{_type_name(value)}{' (empty)' if value == [] else ''}", "input")
    if len(value) > limit:
        raise invalid(f"'input' has {len(value)} items; at most {limit} are allowed (embeddings.max_inputs)",
                      "input")
    texts: list[str] = []
    given = 0
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise invalid(f"'input[{i}]' is an empty string: there is nothing to embed", f"input[{i}]")
            texts.append(item)
        elif _token_ids(item):
            given += len(item)
        else:
            raise invalid(f"'input[{i}]' must be a non-empty string or a non-empty array of token ids, got "
                          f"{_type_name(item)}", f"input[{i}]")
    return texts, given, len(value)


def parse_embeddings(body: JSON, cfg: EmbeddingsConfig | None) -> EmbeddingRequest:
    """Check the request and resolve its model; 400 naming the field, 404 for a model that serves no embeddings."""
    for key in body:
        if key not in _KNOWN:
            raise invalid(f"'{clip(key)}' is not an embeddings field tierwise knows", clip(key),
                          code="unsupported_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid(f"'model' must be a string, got {_type_name(model)}", "model")
    if isinstance(model, str) and len(model) > MAX_NAME_CHARS:
        raise invalid(f"'model' is longer than {MAX_NAME_CHARS} characters: no model is", "model")
    if "input" not in body:
        raise invalid("'input' is required", "input", code="missing_required_parameter")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise invalid("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (type(dims) is not int or dims < 1):
        raise invalid(f"'dimensions' must be an integer >= 1, got {_type_name(dims)}", "dimensions")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise invalid("'user' must be a string", "user")
    if cfg is None:
        raise APIError(404, "this gateway serves no embeddings models (configure an 'embeddings:' section)",
                       code="model_not_found", param="model")
    name = cfg.default_model if model in (None, "", "auto") else model
    assert name is not None
    if name not in cfg.models:
        raise APIError(404, f"model '{clip(name)}' does not serve embeddings (embeddings models: "
                       f"{', '.join(cfg.models)})", code="model_not_found", param="model")
    texts, given, count = _inputs(body["input"], cfg.max_inputs)
    return EmbeddingRequest(name, texts, given, count)


class EmbeddingEstimate(RequestEstimator):
    """Input tokens of an embeddings request per model (its encoding), priced at the model's input rate; what
    budgets reserve before the call, and what is booked when an upstream reports no usage."""

    __slots__ = ("_req",)

    def __init__(self, book: PriceBook, req: EmbeddingRequest) -> None:
        super().__init__(book, {}, None)
        self._req = req

    def prompt_tokens(self, model: str) -> int:
        enc = self._book.encoding(model)
        n = self._counts.get(enc)
        if n is None:
            n = self._counts[enc] = self._req.given_tokens + sum(count_text_tokens(t, enc) for t in self._req.texts)
        return n

    def usage(self, model: str) -> Usage:
        return Usage(input_tokens=self.prompt_tokens(model))
