"""Make upstream OpenAI-ish bodies conform to OpenAI's published schema before a client sees them.

"OpenAI-compatible" servers (vLLM, Ollama, llama.cpp, LM Studio, OpenRouter, proxies) drift: missing ``id`` or
``created``, ``finish_reason`` values like ``eos``, ``usage: null`` in stream chunks, tool-call ``arguments`` as an
object, ``logprobs`` in another shape. Strict clients (the typed SDKs) reject some of these, so the adapter fixes
them here, once, instead of every client tolerating every vendor. Fields the schema does not forbid (e.g. vLLM's
``reasoning_content``) are kept: the schema allows extra properties and clients may want them.

Functions mutate the freshly parsed dict in place (it was just decoded from upstream bytes, nobody else holds it):
on the hot path that is cheaper than building a copy. A body whose *shape* is wrong (no choices list, choices that
are not objects) raises ``ValueError``; the adapter turns that into ``BAD_RESPONSE``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from tierwise.types import JSON

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_FINISH_ALIASES = {
    "eos": "stop",
    "eos_token": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "end": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "safety": "content_filter",
}
# ``service_tier`` values OpenAI documents today (the vendored 2.3.0 schema lists only scale/default).
_SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority"})
_DELTA_ROLES = frozenset({"system", "user", "assistant", "tool"})


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + uuid.uuid4().hex[:24]


def finish_reason(value: Any, *, has_tool_calls: bool = False) -> str:
    """A schema-valid ``finish_reason`` for a finished choice (unknown values become ``stop``)."""
    if value in FINISH_REASONS:
        return value
    mapped = _FINISH_ALIASES.get(value) if isinstance(value, str) else None
    if mapped:
        return mapped
    return "tool_calls" if has_tool_calls else "stop"


def _envelope(body: JSON, obj: str, model: str) -> None:
    """id / object / created / model / system_fingerprint / service_tier, fixed in place."""
    if not isinstance(body.get("id"), str):
        body["id"] = new_id()
    body["object"] = obj
    created = body.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        body["created"] = int(created) if isinstance(created, float) else int(time.time())
    if not isinstance(body.get("model"), str):
        body["model"] = model
    if "system_fingerprint" in body and not isinstance(body["system_fingerprint"], str):
        del body["system_fingerprint"]
    if "service_tier" in body and body["service_tier"] is not None and body["service_tier"] not in _SERVICE_TIERS:
        del body["service_tier"]


def usage_block(usage: Any) -> JSON | None:
    """The usage object if it has the three required integers (null detail blocks dropped), else None."""
    if not isinstance(usage, dict):
        return None
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            if isinstance(value, float) and value.is_integer():
                usage[key] = int(value)
            elif key == "total_tokens" and value is None:
                p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
                if not (isinstance(p, int) and isinstance(c, int)):
                    return None
                usage[key] = p + c
            else:
                return None
    for key in [k for k, v in usage.items() if v is None]:
        del usage[key]
    return usage


def _token_logprobs(items: Any) -> list[JSON] | None:
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("logprob"), int | float):
            continue
        if not isinstance(item.get("token"), str):
            item["token"] = str(item.get("token", ""))
        if "bytes" not in item or not (item["bytes"] is None or isinstance(item["bytes"], list)):
            item["bytes"] = None
        top = item.get("top_logprobs")
        item["top_logprobs"] = [
            t for t in top if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)
        ] if isinstance(top, list) else []
        for t in item["top_logprobs"]:
            t.setdefault("bytes", None)
            if not isinstance(t.get("token"), str):
                t["token"] = str(t.get("token", ""))
        out.append(item)
    return out


def logprobs_block(value: Any) -> JSON | None:
    """``{"content": [...] | null, "refusal": [...] | null}`` or None (other shapes are dropped, not guessed)."""
    if not isinstance(value, dict):
        return None
    return {"content": _token_logprobs(value.get("content")), "refusal": _token_logprobs(value.get("refusal"))}


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()


def _tool_calls(calls: Any) -> list[JSON] | None:
    """Complete tool calls (non-streaming): id, type=function, function{name, arguments-as-string}."""
    if not isinstance(calls, list):
        return None
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            continue
        fn = call["function"]
        if not isinstance(fn.get("name"), str):
            continue
        out.append({
            "id": call["id"] if isinstance(call.get("id"), str) else new_id("call_"),
            "type": "function",
            "function": {"name": fn["name"], "arguments": _arguments(fn.get("arguments"))},
        })
    return out or None


def normalize_completion(body: Any, model: str) -> JSON:
    """A ``chat.completion`` conforming to ``CreateChatCompletionResponse``; raises ValueError on a wrong shape."""
    if not isinstance(body, dict):
        raise ValueError("response is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list):
        raise ValueError("response has no 'choices' list")
    _envelope(body, "chat.completion", model)
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise ValueError("choice is not an object")
        if not isinstance(choice.get("index"), int):
            choice["index"] = i
        message = choice.get("message")
        if not isinstance(message, dict):
            if isinstance(choice.get("text"), str):  # legacy completions shape
                message = {"content": choice.pop("text")}
            else:
                raise ValueError("choice has no 'message' object")
            choice["message"] = message
        message["role"] = "assistant"
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        message["content"] = content if isinstance(content, str) else None
        if not isinstance(message.get("refusal"), str):
            message["refusal"] = None
        if "tool_calls" in message:
            calls = _tool_calls(message["tool_calls"])
            if calls:
                message["tool_calls"] = calls
            else:
                del message["tool_calls"]
        fc = message.get("function_call")
        if fc is not None and not (isinstance(fc, dict) and isinstance(fc.get("name"), str)):
            del message["function_call"]
        elif fc is not None:
            fc["arguments"] = _arguments(fc.get("arguments"))
        elif "function_call" in message:
            del message["function_call"]
        choice["finish_reason"] = finish_reason(choice.get("finish_reason"), has_tool_calls="tool_calls" in message)
        choice["logprobs"] = logprobs_block(choice.get("logprobs"))
    if "usage" in body:
        usage = usage_block(body["usage"])
        if usage is None:
            del body["usage"]
    return body


def _delta_tool_calls(calls: Any) -> list[JSON] | None:
    if not isinstance(calls, list):
        return None
    out = []
    for pos, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        clean: JSON = {"index": call["index"] if isinstance(call.get("index"), int) else pos}
        if isinstance(call.get("id"), str):
            clean["id"] = call["id"]
        if call.get("type") == "function" or "id" in clean:
            clean["type"] = "function"
        fn = call.get("function")
        if isinstance(fn, dict):
            f: JSON = {}
            if isinstance(fn.get("name"), str):
                f["name"] = fn["name"]
            if fn.get("arguments") is not None:
                f["arguments"] = _arguments(fn["arguments"])
            clean["function"] = f
        out.append(clean)
    return out or None


def normalize_chunk(chunk: Any, model: str) -> JSON:
    """A ``chat.completion.chunk`` conforming to ``CreateChatCompletionStreamResponse``; ValueError on a wrong shape.

    ``usage: null`` (sent on every chunk when ``include_usage`` is on) is removed: the schema types it as an object.
    """
    if not isinstance(chunk, dict):
        raise ValueError("chunk is not a JSON object")
    choices = chunk.get("choices")
    if choices is None:
        chunk["choices"] = choices = []
    elif not isinstance(choices, list):
        raise ValueError("chunk 'choices' is not a list")
    _envelope(chunk, "chat.completion.chunk", model)
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise ValueError("chunk choice is not an object")
        if not isinstance(choice.get("index"), int):
            choice["index"] = i
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            choice["delta"] = delta = {}
        if "role" in delta and delta["role"] not in _DELTA_ROLES:  # includes role: null
            del delta["role"]
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            delta["content"] = None
        if "refusal" in delta and not (delta["refusal"] is None or isinstance(delta["refusal"], str)):
            delta["refusal"] = None
        if "tool_calls" in delta:
            calls = _delta_tool_calls(delta["tool_calls"])
            if calls:
                delta["tool_calls"] = calls
            else:
                del delta["tool_calls"]
        if "function_call" in delta and not isinstance(delta["function_call"], dict):
            del delta["function_call"]
        fr = choice.get("finish_reason")
        choice["finish_reason"] = None if fr is None else finish_reason(fr, has_tool_calls=False)
        if "logprobs" in choice:
            choice["logprobs"] = logprobs_block(choice["logprobs"])
    if "usage" in chunk:
        usage = usage_block(chunk["usage"])
        if usage is None:
            del chunk["usage"]
    return chunk


def first_logprobs(body: JSON) -> list[float] | None:
    """Per-token log-probs of the first choice's content, when the upstream returned them."""
    choices = body.get("choices")
    if not choices:
        return None
    lp = choices[0].get("logprobs")
    if not lp or not lp.get("content"):
        return None
    return [float(t["logprob"]) for t in lp["content"]]
