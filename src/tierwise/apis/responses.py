"""OpenAI Responses (``POST /v1/responses``) as a client API: request -> internal chat request, answer -> response.

Stateless (``store: false`` semantics): nothing is kept between requests, so every request carries its whole
conversation in ``input``. Request (platform.openai.com/docs/api-reference/responses/create):

- ``input``: a string (one user message) or items: messages (``role`` user/assistant/system/developer, content a
  string or ``input_text``/``input_image``/``output_text``/``refusal`` parts), ``function_call`` items (merged
  into the assistant turn's ``tool_calls``), ``function_call_output`` items (tool messages); ``reasoning`` items
  of earlier turns are dropped (they belong to the model that wrote them);
- ``instructions`` -> a leading system message; ``tools`` (function tools) / ``tool_choice`` /
  ``parallel_tool_calls``; ``max_output_tokens`` -> ``max_completion_tokens`` (reasoning tokens included, as in
  Responses); ``text.format`` -> ``response_format``; ``reasoning.effort`` -> ``reasoning_effort``;
  ``temperature``, ``top_p``, ``user``, ``metadata`` (ledger tags) as in Chat Completions.
- Refused with a 400 naming the field: ``previous_response_id``, ``conversation``, ``background``, ``prompt``,
  ``store: true`` (nothing is stored), built-in tools (web/file search, computer use, code interpreter, MCP…),
  file inputs, ``item_reference`` items, unknown fields. ``include`` is accepted and has nothing to add (no
  reasoning items, logprobs or search results are produced); ``truncation: auto`` behaves as ``disabled``.

Answers: text -> one ``message`` output item, tool calls -> ``function_call`` items, ``finish_reason: length`` ->
``status: incomplete`` (``max_output_tokens``). Streams emit ``response.created``, ``response.in_progress``, the
item / content-part / delta / done events, and ``response.completed`` (or ``response.failed``) with the usage
(:mod:`tierwise.apis.response_events`).
"""

from __future__ import annotations

import time
from typing import Any

from tierwise.apis.messages import clip
from tierwise.errors import invalid
from tierwise.requests import MAX_NAME_CHARS
from tierwise.types import JSON, Usage

_REFUSED = {
    "previous_response_id": "tierwise stores no responses (store=false semantics): send the whole conversation "
                            "in 'input'",
    "conversation": "tierwise stores no conversations: send the whole conversation in 'input'",
    "prompt": "stored prompt templates live in OpenAI's platform, not in a gateway",
    "max_tool_calls": "built-in tools are not supported, so there is nothing to cap",
    "top_logprobs": "log-probabilities are not returned on /v1/responses",
}
_IGNORED = frozenset({"include", "truncation", "service_tier", "safety_identifier", "prompt_cache_key",
                      "stream_options"})
_MAPPED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                     "max_output_tokens", "temperature", "top_p", "stream", "store", "metadata", "user", "text",
                     "reasoning", "background"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _str_field(obj: JSON, key: str, where: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise invalid(f"'{where}.{key}' must be a string, got {_type_name(v)}", f"{where}.{key}")
    return v


def _part(part: Any, where: str, role: str) -> JSON:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise invalid(f"'{where}' must be a content part object, got {_type_name(part)}", where)
    ptype = part.get("type")
    if ptype in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _str_field(part, "text", where)}
    if ptype == "refusal":
        return {"type": "text", "text": _str_field(part, "refusal", where)}
    if ptype == "input_image" and role == "user":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise invalid(f"'{where}.image_url' must be a URL or data URL string (file_id images are not "
                          "supported)", f"{where}.image_url")
        image: JSON = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise invalid(f"'{where}.type' {clip(str(ptype))!r} is not supported in a {role} message (input_text, "
                  "input_image, output_text)", f"{where}.type")


def _content(content: Any, where: str, role: str) -> str | list[JSON]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"'{where}' must be a string or an array of content parts, got {_type_name(content)}", where)
    parts = [_part(p, f"{where}[{j}]", role) for j, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts) and role != "user":
        return "".join(p["text"] for p in parts)
    return parts


def _input_messages(items: Any) -> list[JSON]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise invalid(f"'input' must be a string or a non-empty array of items, got {_type_name(items)}", "input")
    out: list[JSON] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object, got {_type_name(item)}", where)
        itype = item.get("type", "message")
        if itype == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in _ROLES:
                raise invalid(f"'{where}.role' must be one of {sorted(_ROLES)}", f"{where}.role")
            out.append({"role": role, "content": _content(item.get("content"), f"{where}.content", role)})
        elif itype == "function_call":
            call = {"id": _str_field(item, "call_id", where), "type": "function",
                    "function": {"name": _str_field(item, "name", where),
                                 "arguments": _str_field(item, "arguments", where)}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":  # one assistant turn: its text and its calls
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif itype == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = _content(output, f"{where}.output", "tool")
            elif not isinstance(output, str):
                raise invalid(f"'{where}.output' must be a string or an array of content parts", f"{where}.output")
            out.append({"role": "tool", "tool_call_id": _str_field(item, "call_id", where), "content": output})
        elif itype == "reasoning":
            continue
        else:
            raise invalid(f"'{where}.type' {clip(str(itype))!r} is not supported (message, function_call, "
                          "function_call_output; tierwise stores no items to reference)", f"{where}.type")
    return out


def _tools(tools: Any) -> list[JSON]:
    if not isinstance(tools, list):
        raise invalid(f"'tools' must be an array, got {_type_name(tools)}", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid(f"'{where}' must be an object, got {_type_name(tool)}", where)
        if tool.get("type") != "function":
            raise invalid(f"'{where}.type' {clip(str(tool.get('type')))!r} is not supported: built-in tools run "
                          "inside OpenAI's platform; only function tools pass through a gateway", f"{where}.type")
        fn: JSON = {"name": _str_field(tool, "name", where)}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise invalid("'tool_choice' must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
                  "tool_choice")


def _text_format(text: Any) -> JSON | None:
    if not isinstance(text, dict):
        raise invalid(f"'text' must be an object, got {_type_name(text)}", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise invalid("'text.format.type' must be 'text', 'json_object' or 'json_schema'", "text.format.type")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if not isinstance(fmt.get("schema"), dict):
        raise invalid("'text.format.schema' must be an object (a JSON Schema)", "text.format.schema")
    spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
    spec.setdefault("name", "response")
    return {"type": "json_schema", "json_schema": spec}


def responses_to_chat(body: JSON) -> JSON:
    """The internal chat request for a Responses request; a 400 :class:`APIError` naming the first wrong field."""
    for key in body:
        if key in _REFUSED:
            raise invalid(f"'{key}' is not supported by tierwise: {_REFUSED[key]}", key, code="unsupported_parameter")
        if key not in _MAPPED and key not in _IGNORED:
            raise invalid(f"'{clip(key)}' is not a Responses API field tierwise knows", clip(key),
                          code="unsupported_parameter")
    if body.get("store") not in (None, False):
        raise invalid("'store' must be false or absent: tierwise stores no responses", "store",
                      code="unsupported_parameter")
    if body.get("background") not in (None, False):
        raise invalid("'background' must be false or absent: tierwise answers every request in the foreground",
                      "background", code="unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("'model' is required: a model or tier name, or 'auto'", "model",
                      code="missing_required_parameter")
    if len(model) > MAX_NAME_CHARS:
        raise invalid(f"'model' is longer than {MAX_NAME_CHARS} characters: no model or tier is", "model")
    if "input" not in body:
        raise invalid("'input' is required", "input", code="missing_required_parameter")
    messages = _input_messages(body["input"])
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid(f"'instructions' must be a string, got {_type_name(instructions)}", "instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    out: JSON = {"model": model, "messages": messages}
    mot = body.get("max_output_tokens")
    if mot is not None:
        if isinstance(mot, bool) or not isinstance(mot, int) or mot < 1:
            raise invalid(f"'max_output_tokens' must be an integer >= 1, got {_type_name(mot)}", "max_output_tokens")
        out["max_completion_tokens"] = mot
    ptc = body.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise invalid(f"'parallel_tool_calls' must be a boolean, got {_type_name(ptc)}", "parallel_tool_calls")
    for key in ("temperature", "top_p", "stream", "user", "parallel_tool_calls", "metadata"):
        if body.get(key) is not None:
            out[key] = body[key]  # types are checked by validate_chat_body, naming the same field
    if body.get("tools") is not None:
        tools = _tools(body["tools"])
        if tools:
            out["tools"] = tools
    if body.get("tool_choice") is not None:
        choice = _tool_choice(body["tool_choice"])
        if "tools" in out:
            out["tool_choice"] = choice
    if body.get("text") is not None:
        fmt = _text_format(body["text"])
        if fmt is not None:
            out["response_format"] = fmt
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise invalid(f"'reasoning' must be an object, got {_type_name(reasoning)}", "reasoning")
        effort = reasoning.get("effort")
        if effort is not None:
            if not isinstance(effort, str):
                raise invalid("'reasoning.effort' must be a string", "reasoning.effort")
            out["reasoning_effort"] = effort
    return out


# --- answers -------------------------------------------------------------------------------------------------------
def usage_json(u: Usage) -> JSON:
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cache_read_tokens,
                                                                 "cache_write_tokens": u.cache_write_tokens},
            "output_tokens": u.output_tokens, "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total_tokens}


def _shell(raw: JSON, resp_id: str, model: str, created: int, status: str) -> JSON:
    """The response object's fields that echo the request (what the SDK's ``Response`` model expects)."""
    return {
        "id": resp_id, "object": "response", "created_at": created, "status": status, "error": None,
        "incomplete_details": None, "instructions": raw.get("instructions"),
        "max_output_tokens": raw.get("max_output_tokens"), "metadata": raw.get("metadata") or {}, "model": model,
        "output": [], "parallel_tool_calls": raw.get("parallel_tool_calls", True),
        "previous_response_id": None, "reasoning": {"effort": (raw.get("reasoning") or {}).get("effort"),
                                                    "summary": None},
        "store": False, "temperature": raw.get("temperature"), "text": raw.get("text") or {"format": {"type": "text"}},
        "tool_choice": raw.get("tool_choice", "auto"), "tools": raw.get("tools") or [], "top_p": raw.get("top_p"),
        "truncation": "disabled", "usage": None, "user": raw.get("user"),
    }


def _finish(resp: JSON, finish: str | None) -> None:
    if finish == "length":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        resp["status"] = "incomplete"
        resp["incomplete_details"] = {"reason": "content_filter"}
    else:
        resp["status"] = "completed"


def _message_item(item_id: str, text: str, status: str = "completed") -> JSON:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> JSON:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def chat_to_response(chat: JSON, usage: Usage, model: str, resp_id: str, raw: JSON) -> JSON:
    """A ``chat.completion`` (first choice) as a ``response`` object."""
    resp = _shell(raw, resp_id, model, int(time.time()), "completed")
    choices = chat.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message") or {}
    text = message.get("content")
    if isinstance(text, str) and text:
        resp["output"].append(_message_item(f"msg_{resp_id[5:]}", text))
    for i, call in enumerate(message.get("tool_calls") or ()):
        fn = call.get("function") or {}
        resp["output"].append(_call_item(f"fc_{resp_id[5:]}_{i}", call.get("id") or f"call_{resp_id[5:]}_{i}",
                                         fn.get("name") or "", fn.get("arguments") or ""))
    _finish(resp, first.get("finish_reason"))
    resp["usage"] = usage_json(usage)
    return resp
