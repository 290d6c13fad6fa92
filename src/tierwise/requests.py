"""Parse and check an incoming chat request before any routing or spending happens.

Only what tierwise itself relies on is checked (so the error names the exact field); every other field passes
through to the upstream untouched, including ones this version does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from tierwise.errors import invalid
from tierwise.sanitize import clean_text
from tierwise.types import JSON

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

#: Deepest JSON nesting accepted in a request body (the body object itself is level 1). orjson parses up to 1024
#: levels but serialises at most 254, so a body nested 255-1024 deep used to parse, then fail when forwarded or
#: logged. Real requests are shallow: messages[i].content[j].image_url is level 5, and a tool's JSON Schema adds two
#: levels per nested object; OpenAI caps structured-output schemas at 10 nested objects (about level 25 here).
#: 64 leaves room for any schema a real client sends and keeps every copy tierwise makes of the body (ledger,
#: errors, upstream requests wrapped in a provider's envelope) far below orjson's limit and Python's recursion limit.
MAX_JSON_DEPTH = 64

#: Longest identifier tierwise takes from a client: a model or tier name, an X-Task or X-Session-Id header, the
#: ``user`` field used as a session key. Longer model names are refused; longer session keys are cut.
MAX_NAME_CHARS = 256


#: The request header carrying the caller's tags for the ledger: ``X-Tierwise-Tags: team=search,feature=summarise``.
TAGS_HEADER = "X-Tierwise-Tags"
#: OpenAI's limits on ``metadata``, applied to tags from any source and to the merged set.
MAX_TAGS = 16
MAX_TAG_KEY_CHARS = 64
MAX_TAG_VALUE_CHARS = 512


def parse_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> JSON:
    """The request body as a JSON object; a 400 for anything else, including nesting deeper than ``max_depth``."""
    if not raw:
        raise invalid("request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid(f"request body must be a JSON object, got {_type_name(body)}", code="invalid_json")
    if _deeper_than(body, max_depth):
        raise invalid(f"request body nests JSON deeper than {max_depth} levels", code="json_too_deep")
    return body


def _deeper_than(value: JSON, limit: int) -> bool:
    """True if containers in ``value`` nest more than ``limit`` levels deep (the value itself is level 1).

    Breadth-first and iterative (no recursion limit), visiting each container once. Its cost is proportional to the
    number of JSON values, not bytes: long prompt text costs nothing, a plain chat request ~1 us, 100 messages with
    tools ~20 us. Counting '{' and '[' in the raw bytes first to skip the walk was measured slower on real bodies:
    a byte count scans every prompt character (~100 us for a 180 kB conversation, where this walk takes ~20 us).
    """
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        deeper: list[Any] = []
        for container in level:
            for child in container.values() if type(container) is dict else container:
                kind = type(child)
                if kind is dict or kind is list:
                    deeper.append(child)
        level = deeper
        depth += 1
    return False


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(v), type(v).__name__
    )


def _show(v: Any, limit: int = 60) -> str:
    """A client value for an error message: its repr, cut (an error must not echo megabytes back)."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_int(body: JSON, key: str, minimum: int) -> None:
    v = body.get(key)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < minimum):
        raise invalid(f"'{key}' must be an integer >= {minimum}, got {_show(v)}", key)


def _check_type(obj: JSON, key: str, types: type | tuple[type, ...], what: str, param: str | None = None) -> None:
    v = obj.get(key)
    if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in _as_tuple(types))):
        raise invalid(f"'{param or key}' must be {what}, got {_type_name(v)}", param or key)


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _check_message(i: int, m: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise invalid(f"'{where}' must be an object, got {_type_name(m)}", where)
    role = m.get("role")
    if not isinstance(role, str) or role not in _ROLES:  # str first: a dict or list is not hashable
        shown = _show(role) if isinstance(role, str) else _type_name(role)
        raise invalid(f"'{where}.role' must be one of {sorted(_ROLES)}, got {shown}", f"{where}.role")
    content = m.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict | str):
                raise invalid(
                    f"'{where}.content[{j}]' must be a content part object, got {_type_name(part)}",
                    f"{where}.content[{j}]",
                )
    elif content is not None and not isinstance(content, str):
        raise invalid(
            f"'{where}.content' must be a string or an array of content parts, got {_type_name(content)}",
            f"{where}.content",
        )
    _check_type(m, "name", str, "a string", f"{where}.name")
    _check_type(m, "tool_call_id", str, "a string", f"{where}.tool_call_id")
    calls = m.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise invalid(f"'{where}.tool_calls' must be an array, got {_type_name(calls)}", f"{where}.tool_calls")
        for j, call in enumerate(calls):
            if not isinstance(call, dict):
                raise invalid(f"'{where}.tool_calls[{j}]' must be an object, got {_type_name(call)}",
                              f"{where}.tool_calls[{j}]")


def validate_chat_body(body: JSON) -> None:
    """Raise a 400 :class:`APIError` naming the first wrong field.

    Every field tierwise reads itself (to route, estimate, translate for another provider, or book) is checked for
    its type, so a confused type is a clear 400 here and never an exception deeper in: ``messages`` and each
    message's ``role``, ``content`` (and its parts), ``name``, ``tool_call_id``, ``tool_calls``; ``model``,
    ``stream``, ``stream_options``, ``n``, ``max_tokens``, ``max_completion_tokens``, ``temperature``, ``top_p``,
    ``logprobs``, ``top_logprobs``, ``stop``, ``tools``, ``tool_choice``, ``response_format``, ``user``,
    ``metadata``. Limits that depend on the configuration (``n``, output tokens) are :func:`check_request_limits`.
    """
    if "messages" not in body:
        raise invalid("'messages' is required", "messages", code="missing_required_parameter")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise invalid(f"'messages' must be a non-empty array, got {_type_name(messages)}", "messages")
    for i, m in enumerate(messages):
        _check_message(i, m)
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise invalid(f"'model' must be a string, got {_type_name(model)}", "model")
        if not model.strip():
            raise invalid("'model' must not be empty: name a model or tier, or send 'auto'", "model")
        if len(model) > MAX_NAME_CHARS:
            raise invalid(f"'model' is longer than {MAX_NAME_CHARS} characters: no model or tier is", "model")
    _check_type(body, "stream", bool, "a boolean")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise invalid(f"'stream_options' must be an object, got {_type_name(opts)}", "stream_options")
        _check_type(opts, "include_usage", bool, "a boolean", "stream_options.include_usage")
    _check_int(body, "n", 1)
    _check_int(body, "max_tokens", 1)
    _check_int(body, "max_completion_tokens", 1)
    _check_int(body, "top_logprobs", 0)
    _check_type(body, "temperature", (int, float), "a number")
    _check_type(body, "top_p", (int, float), "a number")
    _check_type(body, "logprobs", bool, "a boolean")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
        isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    ):
        raise invalid(f"'stop' must be a string or an array of strings, got {_type_name(stop)}", "stop")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid(f"'tools' must be an array, got {_type_name(tools)}", "tools")
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise invalid(f"'tools[{j}]' must be an object, got {_type_name(tool)}", f"tools[{j}]")
    _check_type(body, "tool_choice", (str, dict), "a string or an object")
    _check_type(body, "response_format", dict, "an object")
    _check_type(body, "user", str, "a string")
    _check_type(body, "metadata", dict, "an object")


def take_tags(body: JSON, given: str | list[str] | Mapping[str, Any] | None = None, *,
              where: str = TAGS_HEADER) -> dict[str, str]:
    """The request's tags for the ledger: the body's OpenAI ``metadata`` merged with ``given`` (the
    ``X-Tierwise-Tags`` header value(s), ``key=value`` pairs separated by commas; or the in-process Router's
    ``tags=``), ``given`` winning on a key both have. Keys and values are cleaned of control characters.

    Raises a 400 naming ``where`` or ``metadata`` when either is malformed: not ``key=value`` pairs, a repeated or
    empty key, a value that is not a string, more than 16 tags (also merged), a key over 64 or a value over 512
    characters (OpenAI's ``metadata`` limits).

    Takes ``metadata`` out of ``body`` unless ``store`` is true: here it is an annotation for tierwise's ledger, and
    OpenAI refuses ``metadata`` without ``store: true`` (400 "The 'metadata' parameter is only allowed when 'store'
    is enabled"); with ``store: true`` the caller wants OpenAI's stored completions and it goes upstream untouched.
    """
    if "metadata" in body:
        metadata = body["metadata"] if body.get("store") is True else body.pop("metadata")
    else:
        metadata = None
    if metadata is None and not given:
        return {}
    tags = _checked_tags(_metadata_tags(metadata), "metadata") if metadata is not None else {}
    if given:
        if isinstance(given, Mapping):
            if not all(isinstance(k, str) for k in given):
                raise invalid(f"'{where}' keys must be strings", where, code="invalid_tags")
            extra = _checked_tags(dict(given), where)
        else:
            extra = _checked_tags(_parse_tag_pairs(given if isinstance(given, str) else ",".join(given), where), where)
        tags.update(extra)
        if len(tags) > MAX_TAGS:
            raise invalid(f"'{where}' and 'metadata' together carry {len(tags)} tags; at most {MAX_TAGS} are allowed",
                          where, code="invalid_tags")
    return tags


def _metadata_tags(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise invalid(f"'metadata' must be an object of string keys and string values, got {_type_name(metadata)}",
                      "metadata")
    return metadata


def _parse_tag_pairs(text: str, where: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:  # an empty header, a trailing comma
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise invalid(f"'{where}' must be key=value pairs separated by commas; {_show(clean_text(item))} has "
                          "no '='", where, code="invalid_tags")
        if key in tags:
            raise invalid(f"'{where}' names the key {_show(clean_text(key))} twice", where, code="invalid_tags")
        tags[key] = value.strip()
    return tags


def _checked_tags(tags: dict[str, Any], where: str) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise invalid(f"'{where}' carries {len(tags)} tags; at most {MAX_TAGS} are allowed", where,
                      code="invalid_tags")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not key:
            raise invalid(f"'{where}' has an empty key", where, code="invalid_tags")
        if len(key) > MAX_TAG_KEY_CHARS:
            raise invalid(f"'{where}' key {_show(clean_text(key))} is longer than {MAX_TAG_KEY_CHARS} characters",
                          where, code="invalid_tags")
        if not isinstance(value, str):
            raise invalid(f"'{where}' value of {_show(clean_text(key))} must be a string, got {_type_name(value)}",
                          where, code="invalid_tags")
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise invalid(f"'{where}' value of {_show(clean_text(key))} is longer than {MAX_TAG_VALUE_CHARS} "
                          "characters", where, code="invalid_tags")
        out[clean_text(key)] = clean_text(value)
    return out


def model_output_limit(cfg: TierwiseConfig, model: str) -> int:
    """The largest completion a request may ask of ``model``: its ``max_output``, else ``server.max_tokens_limit``."""
    mc = cfg.models.get(model)
    return mc.max_output if mc is not None and mc.max_output is not None else cfg.server.max_tokens_limit


def output_limit(cfg: TierwiseConfig, tier: str | None, model: str | None) -> tuple[int, str]:
    """The largest ``max_tokens`` a request may ask for, and what the limit belongs to (for the error message).

    - a concrete model (``model``, no tier): that model's limit, exactly;
    - a tier: the largest limit among the tier's models. Refusing above the smallest would refuse requests the
      tier's bigger models serve; a value between the two reaches a smaller model only if it is tried, and its
      provider then answers a clear 400 of its own;
    - neither (a classifier will pick the tier): the largest limit of any tier, so nothing the chosen tier could
      serve is refused before the tier is known.
    """
    if tier is None and model is not None:
        return model_output_limit(cfg, model), f"model '{model}'"
    tiers = [tier] if tier is not None else list(cfg.tiers)
    limit = max(model_output_limit(cfg, m) for t in tiers for m in cfg.tiers[t].models)
    return limit, (f"tier '{tier}' (its largest model limit)" if tier is not None else "any tier")


def check_request_limits(body: JSON, cfg: TierwiseConfig, tier: str | None, model: str | None) -> None:
    """Raise a 400 naming the field when ``n`` exceeds ``server.max_n`` or an output budget (``max_tokens``,
    ``max_completion_tokens``) exceeds :func:`output_limit` for the tier or model the request resolves to.

    Values of the wrong type are left to :func:`validate_chat_body`. Costs nothing when the request sets none of the
    three fields (the common case).
    """
    n = body.get("n")
    if type(n) is int and n > cfg.server.max_n:
        raise invalid(f"'n' must be at most {cfg.server.max_n} (server.max_n), got {n}", "n")
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if type(v) is int:
            limit, owner = output_limit(cfg, tier, model)
            if v > limit:
                raise invalid(f"'{key}' of {v} exceeds the output limit of {limit} tokens of {owner}", key)


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
