"""Rule validators: the answer must be valid JSON (matching a schema when given, or when the request asked for
``response_format`` JSON), match a regex, and not be a refusal. Confidence 1 when every rule passes, else 0."""

from __future__ import annotations

import re
from typing import Any

import orjson

from tierwise.config.schema import GateConfig
from tierwise.routing.gates.base import GateContext, GateError
from tierwise.types import JSON

REFUSAL = re.compile(
    r"\b(I(?:'m| am) sorry,? but|I can(?:no|')t (?:help|assist|comply|provide)|I(?:'m| am) (?:not able|unable) to|"
    r"as an AI(?: language model)?)\b",
    re.I,
)


def _schema_errors(value: Any, schema: JSON) -> str | None:
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - jsonschema is a dependency
        raise GateError("json_schema validation needs the 'jsonschema' package") from exc
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    return None if err is None else err.message


def check(text: str, request: JSON, cfg: GateConfig) -> str | None:
    """The first rule the answer breaks, or None."""
    if cfg.reject_refusals and REFUSAL.search(text[:400]):
        return "refusal"
    if cfg.regex is not None and not re.search(cfg.regex, text):
        return f"does not match /{cfg.regex}/"
    rf = request.get("response_format") or {}
    schema = cfg.json_schema
    if schema is None and rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
    if schema is not None or rf.get("type") in ("json_object", "json_schema"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return "not valid JSON"
        if schema is not None:
            problem = _schema_errors(value, schema)
            if problem:
                return f"JSON schema: {problem}"
    return None


class ValidatorGate:
    def __init__(self, cfg: GateConfig) -> None:
        self.cfg = cfg
        self.threshold = cfg.threshold

    def prepare(self, body: JSON) -> None:
        return None

    async def confidence(self, ctx: GateContext) -> float:
        return 0.0 if check(ctx.completion.text, ctx.request, self.cfg) else 1.0
