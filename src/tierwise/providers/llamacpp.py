"""In-process llama.cpp provider: GGUF models answering the OpenAI chat API without an HTTP hop.

Why in-process: a local tier on a small CPU server is cheapest when the gateway owns the model (no second server, no
JSON round trip, exact token counts). The cost is that llama.cpp calls block for seconds, so every model runs on its
own thread (:class:`tierwise.local.runner.LocalModel`) and this module only shapes requests and responses:

- request: OpenAI body -> ``create_chat_completion`` keyword arguments (OpenAI defaults: temperature 1, top_p 1;
  llama.cpp's own ``top_k``/``min_p``/``repeat_penalty`` are honoured when the body carries them). ``tools`` and
  ``tool_choice`` go to the model's chat template; a *named* ``tool_choice`` is grammar-forced into ``tool_calls`` by
  llama-cpp-python, free-form tool-call text is returned as content. ``n > 1`` runs n generations one after another.
- response: a schema-conformant ``chat.completion`` / ``chat.completion.chunk``; usage is always reported (streams end
  with a ``choices: []`` usage chunk, counted from the tokens the model actually processed); ``logprobs`` are exact
  per-token log-probs from the raw logits (non-streaming only: stream chunks carry ``logprobs: null``).
- errors -> :class:`UpstreamError`: ``ValueError`` from llama-cpp (prompt longer than ``n_ctx``, a chat template
  rejecting the message order, an unknown tool name) is CLIENT; a model that cannot be found or loaded is SERVER
  (503); any other generation failure is SERVER (500); ``timeout_s`` elapsing is TIMEOUT. After a timeout the
  generation is told to stop and does so at its next token; a prefill already under way runs to its end (llama.cpp
  cannot interrupt it), and the result is discarded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any

from tierwise.config.schema import ProviderConfig
from tierwise.cost.usage import usage_from_openai
from tierwise.types import JSON, Completion, ErrorKind, StreamChunk, UpstreamError

if TYPE_CHECKING:
    from tierwise.local.runner import LocalModel, Trace

__all__ = ["LlamaCppProvider"]

_FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}
_PASSTHROUGH = ("stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "tools", "tool_choice")
_LLAMA_EXTRAS = ("top_k", "min_p", "repeat_penalty")  # llama.cpp server extensions to the OpenAI body


def _client_error(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.CLIENT, message, status=400)


def _flatten_content(content: Any) -> Any:
    """Chat templates of small local models expect string content; OpenAI allows a list of parts."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _client_error(f"content part of type '{kind}' is not supported by a local text model")
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def _messages(body: JSON) -> list[JSON]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _client_error("'messages' must be a non-empty list of message objects")
    out = []
    for m in messages:
        m = {**m, "content": _flatten_content(m.get("content"))}
        if m.get("role") == "developer":  # the newer name for system; local templates only know "system"
            m["role"] = "system"
        out.append(m)
    return out


def _response_format(fmt: Any) -> JSON | None:
    """OpenAI ``json_object`` / ``json_schema`` -> llama-cpp's grammar-backed ``json_object`` (+ ``schema``)."""
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
    raise _client_error(f"response_format type '{fmt['type']}' is not supported")


def chat_kwargs(body: JSON) -> dict[str, Any]:
    """The ``create_chat_completion`` keyword arguments for one OpenAI chat request (``stream`` and ``n`` excluded)."""
    kw: dict[str, Any] = {
        "messages": _messages(body),
        "max_tokens": body.get("max_completion_tokens", body.get("max_tokens")),
        "temperature": 1.0 if body.get("temperature") is None else float(body["temperature"]),
        "top_p": 1.0 if body.get("top_p") is None else float(body["top_p"]),
    }
    for key in (*_PASSTHROUGH, *_LLAMA_EXTRAS):
        if body.get(key) is not None:
            kw[key] = body[key]
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        kw["response_format"] = fmt
    return kw


def _logprobs_block(trace: Trace, text: str) -> tuple[JSON, list[float]]:
    """OpenAI ``choice.logprobs`` for the tokens that made it into ``text`` (stop-string tails are cut off)."""

    def entry(token: int, logprob: float) -> JSON:
        piece = trace.pieces.get(token, b"")
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}

    budget = len(text.encode("utf-8"))
    content: list[JSON] = []
    values: list[float] = []
    used = 0
    for item in trace.logprobs:
        used += len(trace.pieces.get(item.token, b""))
        if used > budget:
            break
        content.append(
            {**entry(item.token, item.logprob), "top_logprobs": [entry(t, lp) for t, lp in item.top]}
        )
        values.append(item.logprob)
    return {"content": content, "refusal": None}, values


def _message(raw_message: JSON) -> JSON:
    message: JSON = {"role": "assistant", "content": raw_message.get("content"), "refusal": None}
    if raw_message.get("tool_calls"):
        message["tool_calls"] = raw_message["tool_calls"]
    return message


class LlamaCppProvider:
    """The :class:`~tierwise.providers.base.Provider` for ``format: llamacpp``.

    ``models`` maps the upstream model name (what arrives in ``body["model"]``) to a GGUF spec: a packaged model
    name from :data:`tierwise.local.models.REGISTRY` or a path. Nothing is read from disk until :meth:`warmup` or
    the first request for a model; resolving, assembling and loading all happen on that model's thread.
    """

    def __init__(self, name: str, cfg: ProviderConfig, models: dict[str, str]) -> None:
        try:
            import llama_cpp

            from tierwise.local.models import resolve_gguf
            from tierwise.local.runner import LocalModel
        except ImportError as exc:  # an optional dependency: say how to get it
            raise RuntimeError(
                f"provider '{name}' (format: llamacpp) needs llama-cpp-python==0.3.36: "
                "run scripts/install-local-models.sh or pip install 'tierwise[local]'"
            ) from exc
        self.name = name
        self.cfg = cfg
        self._fingerprint = f"llama.cpp-python-{llama_cpp.__version__}"
        self._models: dict[str, LocalModel] = {
            upstream: LocalModel(
                upstream, partial(resolve_gguf, spec), n_ctx=cfg.n_ctx, n_threads=cfg.n_threads
            )
            for upstream, spec in models.items()
        }

    def _model(self, body: JSON) -> LocalModel:
        name = body.get("model")
        model = self._models.get(name) if isinstance(name, str) else None
        if model is None:
            raise UpstreamError(
                ErrorKind.CLIENT,
                f"model {body.get('model')!r} is not served by provider '{self.name}' (have: {', '.join(self._models)})",
                status=404,
            )
        return model

    def _error(self, exc: BaseException, model: str, timeout_s: float) -> UpstreamError:
        from tierwise.local.models import LocalModelError

        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, TimeoutError):
            return UpstreamError(ErrorKind.TIMEOUT, f"{self.name}/{model}: no result within {timeout_s:g}s")
        if isinstance(exc, LocalModelError | OSError):
            return UpstreamError(
                ErrorKind.SERVER, f"{self.name}/{model}: cannot load model: {exc}", status=503
            )
        if isinstance(exc, ValueError):
            return UpstreamError(ErrorKind.CLIENT, f"{self.name}/{model}: {exc}", status=400)
        return UpstreamError(
            ErrorKind.SERVER, f"{self.name}/{model}: {type(exc).__name__}: {exc}", status=500
        )

    async def warmup(self) -> dict[str, float]:
        """Resolve and load every model now (one thread each; loads take turns); returns load seconds per model.

        Failures propagate as they are (e.g. :class:`tierwise.local.models.LocalModelError` with the pip command
        to run), so a deployment with missing weights fails at start-up rather than on the first request.
        """
        names = list(self._models)
        seconds = await asyncio.gather(*(self._models[n].load() for n in names))
        return dict(zip(names, seconds, strict=True))

    async def complete(self, body: JSON, *, timeout_s: float) -> Completion:
        from tierwise.local.runner import Trace

        model = self._model(body)
        kwargs = chat_kwargs(body)
        n = int(body.get("n") or 1)
        want_logprobs = bool(body.get("logprobs"))
        top_n = int(body.get("top_logprobs") or 0) if want_logprobs else 0
        deadline = time.monotonic() + timeout_s
        choices: list[JSON] = []
        first_logprobs: list[float] | None = None
        prompt_tokens = completion_tokens = 0
        for index in range(n):
            trace = Trace(want_logprobs=want_logprobs, top_n=top_n)
            call = dict(kwargs)
            if n > 1 and call.get("seed") is not None:
                call["seed"] = int(call["seed"]) + index  # same seed n times would give n identical samples
            try:
                raw = await model.complete(call, trace, timeout_s=max(deadline - time.monotonic(), 0.001))
            except Exception as exc:
                raise self._error(exc, model.name, timeout_s) from exc
            raw_choice = raw["choices"][0]
            message = _message(raw_choice.get("message") or {})
            finish = raw_choice.get("finish_reason")
            choice: JSON = {
                "index": index,
                "message": message,
                "finish_reason": finish if finish in _FINISH else "stop",
                "logprobs": None,
            }
            if want_logprobs:
                choice["logprobs"], values = _logprobs_block(trace, message["content"] or "")
                first_logprobs = values if first_logprobs is None else first_logprobs
            choices.append(choice)
            raw_usage = raw.get("usage") or {}
            # n generations share one prompt (the KV cache reuses it), so the prompt is counted once
            prompt_tokens = int(raw_usage.get("prompt_tokens", trace.prompt_tokens))
            completion_tokens += int(raw_usage.get("completion_tokens", trace.completion_tokens))
        usage = usage_from_openai({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
        body_out: JSON = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "system_fingerprint": self._fingerprint,
            "choices": choices,
            "usage": usage.to_openai(),
        }
        first = choices[0]
        return Completion(
            body=body_out,
            usage=usage,
            finish_reason=first["finish_reason"],
            text=first["message"]["content"] or "",
            logprobs=first_logprobs,
        )

    async def stream(self, body: JSON, *, timeout_s: float) -> AsyncIterator[StreamChunk]:
        from tierwise.local.runner import Trace

        model = self._model(body)
        if int(body.get("n") or 1) != 1:
            raise _client_error("n > 1 is not supported when streaming from a local model")
        kwargs = chat_kwargs(body)
        trace = Trace()
        head: JSON = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model.name,
            "system_fingerprint": self._fingerprint,
        }
        chunks = model.stream(kwargs, trace, chunk_timeout_s=timeout_s)
        try:
            async for raw in chunks:
                raw_choice = (raw.get("choices") or [{}])[0]
                delta = {
                    k: v
                    for k, v in (raw_choice.get("delta") or {}).items()
                    if k in ("role", "content", "tool_calls")
                }
                finish = raw_choice.get("finish_reason")
                finish = (finish if finish in _FINISH else "stop") if finish else None
                out = {
                    **head,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
                yield StreamChunk(body=out, text=delta.get("content") or "", finish_reason=finish)
        except Exception as exc:
            raise self._error(exc, model.name, timeout_s) from exc
        finally:
            await chunks.aclose()  # stops generation at the next token when the consumer left early
        usage = usage_from_openai(
            {"prompt_tokens": trace.prompt_tokens, "completion_tokens": trace.completion_tokens}
        )
        yield StreamChunk(body={**head, "choices": [], "usage": usage.to_openai()}, usage=usage)

    async def aclose(self) -> None:
        """Stop generations in flight, free every model's memory and end their threads."""
        await asyncio.gather(*(m.aclose() for m in self._models.values()), return_exceptions=True)
