"""Anthropic Messages (``POST /v1/messages``) as a client API: request -> internal chat request, answer -> message.

The upstream direction (chat request -> Messages, for Anthropic upstreams) is
:mod:`tierwise.providers.anthropic_translate`; this module is its mirror and shares its tables and block helpers
(stop reasons, tool choices, images, tool calls), so a request that comes in as Messages and goes out to an
Anthropic upstream arrives as it was sent, ``cache_control`` breakpoints included.

Request (docs.anthropic.com/en/api/messages):

- ``system`` (string or text blocks) -> a system message (text parts keep ``cache_control``);
- user text/image blocks -> content parts; ``tool_result`` blocks -> ``tool`` messages (placed before the rest of
  the user turn, as Chat Completions requires), ``is_error`` and ``cache_control`` kept as hints;
- assistant text / ``tool_use`` -> content / ``tool_calls``; ``thinking`` blocks of earlier turns are dropped
  (they are bound to the model that wrote them, and the next answer may come from another);
- ``tools`` (custom tools) -> function tools; ``tool_choice`` auto/any/tool/none (+ ``disable_parallel_tool_use``);
  ``stop_sequences`` -> ``stop``; ``max_tokens`` (required) -> ``max_tokens``; ``metadata.user_id`` -> ``user``
  (the session key); ``top_k``/``thinking``/top-level ``cache_control`` pass on to Anthropic upstreams and are
  removed for OpenAI ones.
- Refused with a 400 naming the field: document, search-result and server-tool blocks, server tools, unknown
  top-level fields, and every type error.

Answers: content -> a text block, tool calls -> ``tool_use`` blocks, ``finish_reason`` -> ``stop_reason``, and
the usage split into ``input_tokens`` / ``cache_read_input_tokens`` / ``cache_creation_input_tokens`` /
``output_tokens`` from the booked usage (never re-derived from the OpenAI-shaped body, which merges cache writes
into the prompt count).

``stop_sequence`` (:func:`matched_stop`): ``stop_reason: "stop_sequence"`` and the sequence when the model stopped on
one of the request's ``stop_sequences`` *and the upstream said which*: an Anthropic upstream's ``stop_sequence``, or
the ``stop_reason`` string vLLM/SGLang put on an OpenAI-shaped choice. An upstream that only says
``finish_reason: "stop"`` (OpenAI itself) strips the sequence from the text and does not say whether it or the
model's own end of turn stopped it, so that answer is ``end_turn`` with ``stop_sequence: null``: tierwise does not
guess (a text that happens to end like a stop sequence proves nothing).

Streams: :mod:`tierwise.apis.message_events`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tierwise.errors import APIError, invalid
from tierwise.providers.anthropic_translate import (
    FINISH_REASONS,
    HINTS,
    MATCHED_STOP,
    TOOL_CHOICES,
    image_url,
    tool_call,
    tool_use_block,
)
from tierwise.requests import MAX_NAME_CHARS
from tierwise.types import JSON, UpstreamError, Usage

_TOOL_CHOICE_BACK = {v: k for k, v in TOOL_CHOICES.items()}  # any -> required, …
_KNOWN = frozenset({"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p",
                    "top_k", "metadata", "tools", "tool_choice", "thinking", "service_tier",
                    "cache_control"})
_UNSUPPORTED_HINT = {
    "mcp_servers": "MCP connectors run inside Anthropic's API, not in a gateway",
    "container": "code-execution containers run inside Anthropic's API, not in a gateway",
}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
                429: "rate_limit_error", 499: "invalid_request_error", 504: "timeout_error", 529: "overloaded_error"}


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def error_body(err: APIError) -> JSON:
    """An :class:`APIError` in Anthropic's error shape (the SDK picks its exception class by HTTP status)."""
    etype = _ERROR_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": etype, "message": err.message}}


def usage_json(u: Usage) -> JSON:
    """A tierwise :class:`Usage` as Messages usage (its ``input_tokens`` already excludes cache reads and writes)."""
    return {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "cache_creation_input_tokens": u.cache_write_tokens, "cache_read_input_tokens": u.cache_read_tokens}


# --- request -------------------------------------------------------------------------------------------------------
class _Req:
    """One translation: remembers whether Messages-only hints were kept (then :data:`HINTS` is set)."""

    def __init__(self) -> None:
        self.hints = False

    def cache(self, src: JSON, dst: JSON, where: str) -> JSON:
        cc = src.get("cache_control")
        if cc is not None:
            if not isinstance(cc, dict):
                path = f"{where}.cache_control" if where else "cache_control"
                raise invalid(f"'{path}' must be an object, got {_type_name(cc)}", path)
            dst["cache_control"] = cc
            self.hints = True
        return dst

    def text_part(self, block: JSON, where: str) -> JSON:
        text = block.get("text")
        if not isinstance(text, str):
            raise invalid(f"'{where}.text' must be a string, got {_type_name(text)}", f"{where}.text")
        return self.cache(block, {"type": "text", "text": text}, where)

    def image_part(self, block: JSON, where: str) -> JSON:
        source = block.get("source")
        url = image_url(source) if isinstance(source, dict) else None
        if url is None:
            raise invalid(f"'{where}.source' must be a base64 or url image source", f"{where}.source")
        return self.cache(block, {"type": "image_url", "image_url": {"url": url}}, where)

    def blocks(self, content: Any, where: str) -> list[JSON]:
        """Content as a list of blocks (a string is one text block); each must be an object with a type."""
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise invalid(f"'{where}' must be a string or an array of content blocks, got {_type_name(content)}",
                          where)
        for j, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise invalid(f"'{where}[{j}]' must be a content block object with a 'type'", f"{where}[{j}]")
        return content

    def tool_result(self, block: JSON, where: str) -> JSON:
        tid = block.get("tool_use_id")
        if not isinstance(tid, str) or not tid:
            raise invalid(f"'{where}.tool_use_id' must be a non-empty string", f"{where}.tool_use_id")
        msg: JSON = {"role": "tool", "tool_call_id": tid}
        content = block.get("content", "")
        if isinstance(content, str):
            msg["content"] = content
        else:
            parts = []
            for k, inner in enumerate(self.blocks(content, f"{where}.content")):
                w = f"{where}.content[{k}]"
                if inner["type"] == "text":
                    parts.append(self.text_part(inner, w))
                elif inner["type"] == "image":
                    parts.append(self.image_part(inner, w))
                else:
                    raise invalid(f"'{w}.type' {inner['type']!r} is not supported in a tool_result (text, image)",
                                  f"{w}.type")
            msg["content"] = parts
        is_error = block.get("is_error")
        if is_error is not None:
            if not isinstance(is_error, bool):
                raise invalid(f"'{where}.is_error' must be a boolean", f"{where}.is_error")
            msg["is_error"] = is_error
            self.hints = True
        return self.cache(block, msg, where)

    def user(self, content: Any, where: str) -> list[JSON]:
        tools: list[JSON] = []
        parts: list[JSON] = []
        for j, block in enumerate(self.blocks(content, where)):
            w, btype = f"{where}[{j}]", block["type"]
            if btype == "text":
                parts.append(self.text_part(block, w))
            elif btype == "image":
                parts.append(self.image_part(block, w))
            elif btype == "tool_result":
                tools.append(self.tool_result(block, w))
            else:
                raise invalid(f"'{w}.type' {btype!r} is not supported in a user turn (text, image, tool_result)",
                              f"{w}.type")
        out = tools
        if parts:
            out.append({"role": "user", "content": _simplest(parts)})
        return out

    def assistant(self, content: Any, where: str) -> JSON:
        parts: list[JSON] = []
        calls: list[JSON] = []
        for j, block in enumerate(self.blocks(content, where)):
            w, btype = f"{where}[{j}]", block["type"]
            if btype == "text":
                parts.append(self.text_part(block, w))
            elif btype == "tool_use":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise invalid(f"'{w}' needs a string 'id' and 'name'", w)
                if not isinstance(block.get("input", {}), dict):
                    raise invalid(f"'{w}.input' must be an object", f"{w}.input")
                calls.append(tool_call(block))
            elif btype in ("thinking", "redacted_thinking"):
                continue
            else:
                raise invalid(f"'{w}.type' {btype!r} is not supported in an assistant turn (text, tool_use, "
                              "thinking)", f"{w}.type")
        msg: JSON = {"role": "assistant", "content": _simplest(parts) if parts else None}
        if calls:
            msg["tool_calls"] = calls
        return msg

    def tools(self, tools: Any) -> list[JSON]:
        if not isinstance(tools, list):
            raise invalid(f"'tools' must be an array, got {_type_name(tools)}", "tools")
        out = []
        for i, tool in enumerate(tools):
            w = f"tools[{i}]"
            if not isinstance(tool, dict):
                raise invalid(f"'{w}' must be an object, got {_type_name(tool)}", w)
            if tool.get("type") not in (None, "custom"):
                raise invalid(f"'{w}.type' {_show(tool.get('type'))}: server tools run inside Anthropic's API and "
                              "are not supported by tierwise (define a custom tool with name and input_schema)",
                              f"{w}.type")
            name, schema = tool.get("name"), tool.get("input_schema")
            if not isinstance(name, str) or not name:
                raise invalid(f"'{w}.name' must be a non-empty string", f"{w}.name")
            if not isinstance(schema, dict):
                raise invalid(f"'{w}.input_schema' must be an object (a JSON Schema)", f"{w}.input_schema")
            fn: JSON = {"name": name, "parameters": schema}
            if isinstance(tool.get("description"), str):
                fn["description"] = tool["description"]
            out.append(self.cache(tool, {"type": "function", "function": fn}, w))
        return out


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:59] + "…"


def _simplest(parts: list[JSON]) -> str | list[JSON]:
    """One plain text part is sent as a string (what every OpenAI-compatible server accepts)."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        return str(parts[0]["text"])
    return parts


def _tool_choice(choice: Any, out: JSON) -> None:
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise invalid("'tool_choice' must be an object with type auto, any, tool or none", "tool_choice")
    if choice["type"] == "tool":
        if not isinstance(choice.get("name"), str):
            raise invalid("'tool_choice.name' must be a string when type is 'tool'", "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        out["tool_choice"] = _TOOL_CHOICE_BACK[choice["type"]]
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("'tool_choice.disable_parallel_tool_use' must be a boolean",
                      "tool_choice.disable_parallel_tool_use")
    if parallel and choice["type"] != "none":
        out["parallel_tool_calls"] = False


def _number(body: JSON, key: str, lo: float, hi: float | None = None) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float) or v < lo or (hi is not None and v > hi):
        rng = f"between {lo:g} and {hi:g}" if hi is not None else f">= {lo:g}"
        raise invalid(f"'{key}' must be a number {rng}, got {_show(v)}", key)


def messages_to_chat(body: JSON) -> JSON:
    """The internal chat request for a Messages request; a 400 :class:`APIError` naming the first wrong field."""
    for key in body:
        if key not in _KNOWN:
            why = _UNSUPPORTED_HINT.get(key, "not a Messages API field tierwise knows")
            raise invalid(f"'{clip(key)}' is not supported by tierwise's /v1/messages: {why}", clip(key),
                          code="unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("'model' is required: a model or tier name, or 'auto'", "model", code="missing_required_parameter")
    if len(model) > MAX_NAME_CHARS:
        raise invalid(f"'model' is longer than {MAX_NAME_CHARS} characters: no model or tier is", "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid("'max_tokens' is required", "max_tokens", code="missing_required_parameter")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid(f"'max_tokens' must be an integer >= 1, got {_show(max_tokens)}", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid(f"'messages' must be a non-empty array, got {_type_name(messages)}", "messages")
    req = _Req()
    out: JSON = {"model": model, "max_tokens": max_tokens}
    chat: list[JSON] = []
    system = body.get("system")
    if system is not None:
        parts = []
        for j, block in enumerate(req.blocks(system, "system")):
            if block["type"] != "text":
                raise invalid(f"'system[{j}].type' must be 'text', got {_show(block['type'])}", f"system[{j}].type")
            parts.append(req.text_part(block, f"system[{j}]"))
        if parts:
            chat.append({"role": "system", "content": _simplest(parts)})
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"'{where}' must be an object, got {_type_name(m)}", where)
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"'{where}.role' must be 'user' or 'assistant' (system prompts go in 'system'), got "
                          f"{_show(role)}", f"{where}.role")
        if "content" not in m:
            raise invalid(f"'{where}.content' is required", f"{where}.content", code="missing_required_parameter")
        if role == "user":
            chat.extend(req.user(m["content"], f"{where}.content"))
        else:
            chat.append(req.assistant(m["content"], f"{where}.content"))
    out["messages"] = chat
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise invalid("'stop_sequences' must be an array of strings", "stop_sequences")
        if stop:
            out["stop"] = stop
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid(f"'stream' must be a boolean, got {_type_name(stream)}", "stream")
    if stream:
        out["stream"] = True
    _number(body, "temperature", 0.0, 1.0)
    _number(body, "top_p", 0.0, 1.0)
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    top_k = body.get("top_k")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise invalid(f"'top_k' must be an integer >= 0, got {_show(top_k)}", "top_k")
        out["top_k"] = top_k
        req.hints = True
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise invalid(f"'thinking' must be an object, got {_type_name(thinking)}", "thinking")
        out["thinking"] = thinking
        req.hints = True
    if body.get("cache_control") is not None:  # automatic caching: the breakpoint moves with the conversation
        req.cache(body, out, "")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or any(k != "user_id" for k in metadata):
            raise invalid("'metadata' must be an object with at most 'user_id'", "metadata")
        uid = metadata.get("user_id")
        if uid is not None and not isinstance(uid, str):
            raise invalid("'metadata.user_id' must be a string", "metadata.user_id")
        if uid:
            out["user"] = uid
    if body.get("tools") is not None:
        tools = req.tools(body["tools"])
        if tools:
            out["tools"] = tools
            if body.get("tool_choice") is not None:
                _tool_choice(body["tool_choice"], out)
    elif body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], {})  # checked, but without tools there is nothing to choose
    if req.hints:
        out[HINTS] = True
    return out


def clip(text: str, limit: int = 64) -> str:
    """A client-chosen name cut for an error message (an error must not echo megabytes back)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- answers -------------------------------------------------------------------------------------------------------
def _tool_use(call: JSON) -> JSON:
    """A tool call of an answer as a ``tool_use`` block; arguments a model wrote as invalid JSON are kept as text."""
    try:
        return tool_use_block(call)
    except UpstreamError:
        fn: JSON = call["function"] if isinstance(call.get("function"), dict) else {}
        return {"type": "tool_use", "id": call.get("id") or "toolu_tw", "name": str(fn.get("name") or ""),
                "input": {"value": fn.get("arguments")}}


def matched_stop(choice: JSON, stop_sequences: Sequence[str]) -> str | None:
    """The request's stop sequence that ended this (finished) choice, when the upstream named it (see the module
    docstring); None when it did not, or named something the request did not ask for."""
    seq = choice.get(MATCHED_STOP)
    if choice.get("finish_reason") != "stop" or not isinstance(seq, str) or seq not in stop_sequences:
        return None
    return seq


def stop_reason(finish: str | None, tool_calls: bool, stop_seq: str | None) -> str:
    """Messages' ``stop_reason`` for a chat ``finish_reason`` (a matched stop sequence wins; a plain stop with tool
    calls is ``tool_use``)."""
    if stop_seq is not None:
        return "stop_sequence"
    stop = FINISH_REASONS.get(finish or "stop", "end_turn")
    return "tool_use" if tool_calls and stop == "end_turn" else stop


def chat_to_message(chat: JSON, usage: Usage, model: str, msg_id: str, stop_sequences: Sequence[str] = ()) -> JSON:
    """A ``chat.completion`` (first choice) as a Messages ``message`` with the given (booked) usage;
    ``stop_sequences``: the request's, for ``stop_sequence``."""
    choices = chat.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message") or {}
    content: list[JSON] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    content.extend(_tool_use(c) for c in calls if isinstance(c, dict))
    seq = matched_stop(first, stop_sequences)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason(first.get("finish_reason"), bool(calls), seq), "stop_sequence": seq,
            "usage": usage_json(usage)}
