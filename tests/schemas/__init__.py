"""OpenAI's published JSON shapes, for asserting that what the gateway emits is what OpenAI clients expect.

``openai_chat.json`` is vendored from github.com/openai/openai-openapi (``openapi.yaml``, commit
578000861507cd19620e3f1092adf62303757c0a, spec version 2.3.0); its ``$comment`` says exactly what was converted.
Usage: ``validate(body, "CreateChatCompletionResponse")`` raises ``jsonschema.ValidationError`` on a mismatch.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

_DOC = json.loads((Path(__file__).with_name("openai_chat.json")).read_text())
SCHEMA_NAMES = tuple(_DOC["$defs"])


@cache
def validator(name: str) -> Draft202012Validator:
    if name not in _DOC["$defs"]:
        raise KeyError(f"no schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    schema = {**_DOC, "$ref": f"#/$defs/{name}"}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(obj: Any, name: str) -> None:
    """Raise ``jsonschema.ValidationError`` (the most relevant one) if ``obj`` does not conform to schema ``name``."""
    validator(name).validate(obj)


def errors(obj: Any, name: str) -> list[str]:
    """All violations as readable strings (empty when ``obj`` conforms)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator(name).iter_errors(obj)]
