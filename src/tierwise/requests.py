"""Parse and check an incoming chat request before any routing or spending happens.

Only what tierwise itself relies on is checked (so the error names the exact field); every other field passes
through to the upstream untouched, including ones this version does not know.
"""

from __future__ import annotations

from typing import Any

import orjson

from tierwise.errors import invalid
from tierwise.types import JSON

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_json_body(raw: bytes) -> JSON:
    if not raw:
        raise invalid("request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _check_int(body: JSON, key: str, minimum: int) -> None:
    v = body.get(key)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < minimum):
        raise invalid(f"'{key}' must be an integer >= {minimum}, got {v!r}", key)


def validate_chat_body(body: JSON) -> None:
    """Raise a 400 :class:`APIError` naming the first wrong field."""
    if "messages" not in body:
        raise invalid("'messages' is required", "messages", code="missing_required_parameter")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise invalid(f"'messages' must be a non-empty array, got {_type_name(messages)}", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise invalid(f"'messages[{i}]' must be an object, got {_type_name(m)}", f"messages[{i}]")
        role = m.get("role")
        if role not in _ROLES:
            raise invalid(
                f"'messages[{i}].role' must be one of {sorted(_ROLES)}, got {role!r}", f"messages[{i}].role"
            )
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise invalid(
                f"'messages[{i}].content' must be a string or an array of content parts, got {_type_name(content)}",
                f"messages[{i}].content",
            )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid(f"'model' must be a string, got {_type_name(model)}", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid(f"'stream' must be a boolean, got {_type_name(stream)}", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise invalid(f"'stream_options' must be an object, got {_type_name(opts)}", "stream_options")
    _check_int(body, "n", 1)
    _check_int(body, "max_tokens", 1)
    _check_int(body, "max_completion_tokens", 1)
    t = body.get("temperature")
    if t is not None and (not isinstance(t, int | float) or isinstance(t, bool)):
        raise invalid(f"'temperature' must be a number, got {_type_name(t)}", "temperature")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid(f"'tools' must be an array, got {_type_name(tools)}", "tools")


def prompt_text(body: JSON, max_chars: int) -> str:
    """The text a routing decision is about: the last user message (string or text parts), else ``prompt``.

    Earlier turns and the system prompt are left out on purpose: they describe the conversation, while the tier is
    about what is asked *now*. The head is kept when truncating because instructions usually open a prompt.
    """
    text = ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                text = _content_text(msg.get("content"))
                break
    elif "prompt" in body:
        prompt = body["prompt"]
        if isinstance(prompt, list):
            prompt = prompt[-1] if prompt and isinstance(prompt[-1], str) else ""
        text = prompt if isinstance(prompt, str) else ""
    return text.strip()[:max_chars]


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""
