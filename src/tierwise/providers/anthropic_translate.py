"""Pure translation between OpenAI Chat Completions and Anthropic Messages (no I/O, unit-testable).

Request (OpenAI -> Anthropic, docs.anthropic.com/en/api/messages):

- ``system``/``developer`` messages, wherever they appear, become the top-level ``system`` (text blocks, joined;
  ``cache_control`` on a content part is kept so prompt caching works through the gateway).
- user/assistant text and content parts -> content blocks; ``image_url`` data URLs -> base64 ``image`` blocks,
  http(s) URLs -> ``url`` image sources. Other part types (audio, files) are not translatable: ``CLIENT`` error.
- assistant ``tool_calls`` -> ``tool_use`` blocks (``arguments`` JSON string parsed into ``input``);
  ``tool`` messages -> ``tool_result`` blocks in a user turn. Consecutive turns of the same role are merged,
  because Anthropic requires alternation (parallel tool results must share one user turn).
- ``tools`` -> ``{name, description, input_schema}``; ``tool_choice`` auto/none/required/{function} ->
  auto/none/any/tool; ``parallel_tool_calls: false`` -> ``disable_parallel_tool_use``.
- ``stop`` -> ``stop_sequences``; ``max_completion_tokens``/``max_tokens`` -> ``max_tokens`` (required by
  Anthropic; 4096 when absent); ``temperature`` (clamped to Anthropic's 0..1), ``top_p``, ``user`` ->
  ``metadata.user_id``; Anthropic-only ``top_k``/``thinking``/``metadata`` pass through.
- ``response_format`` json_object/json_schema is best effort: an instruction (with the schema) appended to the
  system prompt. Anthropic has no JSON mode here, so callers that need a guarantee should validate (the cascade's
  schema validator gate does).
- Everything else OpenAI-specific (``logprobs``, ``seed``, penalties, ``logit_bias``) is dropped: Anthropic rejects
  unknown fields. ``n > 1`` cannot be honoured and is a ``CLIENT`` error rather than a silently smaller answer.

Response: text blocks joined into ``content``; ``tool_use`` -> ``tool_calls``; ``stop_reason`` end_turn /
stop_sequence / pause_turn -> stop, max_tokens / model_context_window_exceeded -> length, tool_use -> tool_calls,
refusal -> content_filter. ``thinking`` blocks are not part of the OpenAI message and are dropped. The stop sequence
that ended an answer (``stop_sequence``) is kept as the choice's ``stop_reason``, the field vLLM and SGLang use for
it in OpenAI-shaped answers (:data:`MATCHED_STOP`), so ``/v1/messages`` can report it back.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tierwise.cost.usage import usage_from_anthropic
from tierwise.providers.normalize import new_id
from tierwise.types import JSON, Completion, ErrorKind, UpstreamError, Usage

DEFAULT_MAX_TOKENS = 4096
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: The reverse of STOP_REASONS, for answers translated back into Messages (``/v1/messages`` served from any model).
FINISH_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
#: The choice field naming the stop string that ended an answer (vLLM's and SGLang's extension of OpenAI's choice;
#: tierwise's Anthropic adapter fills it from ``stop_sequence``); a token id (int) there names no stop sequence.
MATCHED_STOP = "stop_reason"
#: OpenAI string ``tool_choice`` values and their Messages ``tool_choice.type`` (used in both directions).
TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}
_PASS_THROUGH = ("top_k", "thinking", "cache_control")  # Anthropic-only: automatic caching is top-level
_JSON_OBJECT_HINT = "Respond with a single valid JSON object and nothing else (no prose, no code fences)."


def _bad(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.CLIENT, f"anthropic adapter: {message}", status=400)


def _text_block(text: str, part: JSON | None = None) -> JSON:
    block: JSON = {"type": "text", "text": text}
    if part is not None and "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def image_source(url: Any) -> JSON:
    """An OpenAI ``image_url.url`` (base64 data URL or http(s) URL) -> a Messages image ``source``."""
    if not isinstance(url, str):
        raise _bad("image_url part without a url")
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or ";base64" not in header:
            raise _bad("image data URL must be base64-encoded")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise _bad("image_url must be a data: or http(s) URL")


def image_url(source: JSON) -> str | None:
    """The reverse of :func:`image_source`: a Messages image ``source`` -> an OpenAI image URL (None: not one)."""
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") if isinstance(source.get("media_type"), str) else "image/png"
        return f"data:{media_type};base64,{source['data']}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    return None


def _image_block(part: JSON) -> JSON:
    image = part.get("image_url")
    block: JSON = {"type": "image", "source": image_source(image.get("url") if isinstance(image, dict) else image)}
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _content_blocks(content: Any, *, images: bool) -> list[JSON]:
    """OpenAI message content (string or parts) -> Anthropic blocks; empty text is skipped (Anthropic rejects it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    if not isinstance(content, list):
        raise _bad("message content must be a string or a list of parts")
    blocks: list[JSON] = []
    for part in content:
        if isinstance(part, str):
            if part:
                blocks.append(_text_block(part))
            continue
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append(_text_block(part["text"], part))
        elif ptype == "refusal" and isinstance(part.get("refusal"), str):
            if part["refusal"]:
                blocks.append(_text_block(part["refusal"]))
        elif ptype == "image_url" and images:
            blocks.append(_image_block(part))
        else:
            raise _bad(f"content part type {ptype!r} is not supported here")
    return blocks


def tool_use_block(call: Any) -> JSON:
    """An OpenAI tool call -> a Messages ``tool_use`` block (``arguments`` JSON parsed into ``input``)."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad("assistant tool_calls entry without function.name")
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            parsed = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            raise _bad(f"tool call arguments for {fn['name']!r} are not valid JSON") from None
    else:
        parsed = args if args is not None else {}
    if not isinstance(parsed, dict):
        parsed = {"value": parsed}  # Anthropic's input must be an object
    return {"type": "tool_use", "id": call.get("id") or new_id("toolu_"), "name": fn["name"], "input": parsed}


def _tool_result(msg: JSON) -> JSON:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str):
        raise _bad("tool message without tool_call_id")
    content = msg.get("content")
    block: JSON = {"type": "tool_result", "tool_use_id": call_id}
    for key in ("is_error", "cache_control"):  # set on tool messages translated from /v1/messages (see HINTS)
        if key in msg:
            block[key] = msg[key]
    if isinstance(content, str):
        block["content"] = content
    else:
        block["content"] = _content_blocks(content, images=True)
    return block


def _system_text(content: Any) -> list[JSON]:
    return _content_blocks(content, images=False)


def _response_format_hint(fmt: Any) -> str | None:
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return _JSON_OBJECT_HINT
    if fmt.get("type") == "json_schema":
        spec: JSON = fmt["json_schema"] if isinstance(fmt.get("json_schema"), dict) else {}
        schema = spec.get("schema")
        if schema is None:
            return _JSON_OBJECT_HINT
        return (
            "Respond with a single valid JSON value that conforms to this JSON Schema, and nothing else "
            f"(no prose, no code fences):\n{orjson.dumps(schema).decode()}"
        )
    return None


def _tools(tools: Any) -> list[JSON]:
    out = []
    for tool in tools if isinstance(tools, list) else []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad("only function tools are supported")
        spec: JSON = {"name": fn["name"], "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        if "cache_control" in tool:
            spec["cache_control"] = tool["cache_control"]
        out.append(spec)
    return out


def _tool_choice(choice: Any, parallel: Any) -> JSON | None:
    if choice is None:
        result: JSON | None = {"type": "auto"} if parallel is False else None
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, str) and choice in TOOL_CHOICES:
        result = {"type": TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise _bad(f"unsupported tool_choice {choice!r}")
    if result is not None and parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


#: Set (to True) on an internal chat request translated from ``/v1/messages`` whose messages or tools carry
#: Messages-only annotations: ``cache_control`` on content parts, tools and tool messages, ``is_error`` on tool
#: messages. This adapter sends them on; OpenAI-format adapters remove them first (:func:`strip_hints`), because
#: the OpenAI API refuses fields it does not know.
HINTS = "_tierwise_anthropic_hints"
_HINT_KEYS = ("cache_control", "is_error")


def _without(obj: JSON, keys: tuple[str, ...]) -> JSON:
    return {k: v for k, v in obj.items() if k not in keys}


def _message_without_hints(msg: Any) -> Any:
    """A message without hints on itself (tool messages) or its content parts; the same object when it has none."""
    if not isinstance(msg, dict):
        return msg
    content = msg.get("content")
    parts = isinstance(content, list) and any(isinstance(p, dict) and "cache_control" in p for p in content)
    if not parts and not any(k in msg for k in _HINT_KEYS):
        return msg
    out = _without(msg, _HINT_KEYS)
    if parts and isinstance(content, list):
        out["content"] = [_without(p, _HINT_KEYS) if isinstance(p, dict) else p for p in content]
    return out


def strip_hints(body: JSON) -> JSON:
    """A copy of ``body`` without :data:`HINTS`, the Messages-only ``top_k``/``thinking``/``cache_control`` and the
    hints where the Messages translation puts them (messages, their content parts, tools); what holds none is shared,
    not copied (tool schemas and long texts are never walked)."""
    out = {k: v for k, v in body.items() if k != HINTS and k not in _PASS_THROUGH}
    if isinstance(out.get("messages"), list):
        out["messages"] = [_message_without_hints(m) for m in out["messages"]]
    if isinstance(out.get("tools"), list):
        out["tools"] = [_without(t, _HINT_KEYS) if isinstance(t, dict) and "cache_control" in t else t
                        for t in out["tools"]]
    return out


def to_anthropic_request(body: JSON) -> JSON:
    """The Messages API request for an OpenAI chat request. Raises ``UpstreamError(CLIENT)`` if untranslatable."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list")
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise _bad("n > 1 is not supported by the Anthropic Messages API")
    system: list[JSON] = []
    turns: list[JSON] = []

    def add(role: str, blocks: list[JSON]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for msg in messages:
        if not isinstance(msg, dict):
            raise _bad("each message must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_system_text(msg.get("content")))
        elif role == "user":
            add("user", _content_blocks(msg.get("content"), images=True))
        elif role == "assistant":
            blocks = _content_blocks(msg.get("content"), images=False)
            blocks.extend(tool_use_block(c) for c in msg.get("tool_calls") or [])
            add("assistant", blocks)
        elif role == "tool":
            add("user", [_tool_result(msg)])
        else:
            raise _bad(f"message role {role!r} is not supported")

    hint = _response_format_hint(body.get("response_format"))
    if hint:
        system.append(_text_block(hint))

    out: JSON = {"model": body.get("model"), "messages": turns}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else DEFAULT_MAX_TOKENS
    if system:
        if any("cache_control" in b for b in system):
            out["system"] = system
        else:
            out["system"] = "\n\n".join(b["text"] for b in system)
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    if isinstance(body.get("top_p"), int | float):
        out["top_p"] = body["top_p"]
    for key in _PASS_THROUGH:
        if key in body:
            out[key] = body[key]
    metadata = dict(body["metadata"]) if isinstance(body.get("metadata"), dict) else {}
    if isinstance(body.get("user"), str):
        metadata["user_id"] = body["user"]
    metadata = {k: v for k, v in metadata.items() if k == "user_id"}  # the only key Messages accepts
    if metadata:
        out["metadata"] = metadata
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    if body.get("stream"):
        out["stream"] = True
    return out


def tool_call(block: JSON) -> JSON:
    """A Messages ``tool_use`` block -> an OpenAI tool call (``input`` serialised into ``arguments``)."""
    return {
        "id": block.get("id") or new_id("toolu_"),
        "type": "function",
        "function": {"name": block.get("name") or "", "arguments": orjson.dumps(block.get("input") or {}).decode()},
    }


def from_anthropic_response(resp: Any, model: str) -> Completion:
    """An Anthropic ``message`` -> :class:`Completion` with an OpenAI ``chat.completion`` body. ValueError on shape."""
    if not isinstance(resp, dict) or not isinstance(resp.get("content"), list):
        raise ValueError("response has no 'content' list")
    texts: list[str] = []
    calls: list[JSON] = []
    for block in resp["content"]:
        if not isinstance(block, dict):
            raise ValueError("content block is not an object")
        btype = block.get("type")
        if btype == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif btype == "tool_use":
            calls.append(tool_call(block))
    text = "".join(texts)
    stop_reason = resp.get("stop_reason")
    finish = STOP_REASONS.get(str(stop_reason), "tool_calls" if calls else "stop")
    message: JSON = {"role": "assistant", "content": text if (text or not calls) else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    usage: Usage = usage_from_anthropic(resp.get("usage"))
    choice: JSON = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    if stop_reason == "stop_sequence" and isinstance(resp.get("stop_sequence"), str):
        choice[MATCHED_STOP] = resp["stop_sequence"]
    body: JSON = {
        "id": resp["id"] if isinstance(resp.get("id"), str) else new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": resp["model"] if isinstance(resp.get("model"), str) else model,
        "choices": [choice],
        "usage": usage.to_openai(),
    }
    return Completion(body=body, usage=usage, finish_reason=finish, text=text, logprobs=None)
