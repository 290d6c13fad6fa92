"""OpenAI chat chunks of one stream -> Responses stream events (pure; one instance per stream).

Every Responses event names its output item (``output_index``, ``item_id``), so items need not stream one after
another: each is added when its first piece arrives and stays open until the stream ends, and each piece goes to
its own item. That is what keeps tool calls whole when an OpenAI-shaped upstream interleaves their argument
fragments by ``index`` (call 0, call 1, call 0 again …): fragments are assembled per ``index``, each
``response.function_call_arguments.delta`` names the call's own item, and at the end every item gets its
``…done`` events in output order — ``response.function_call_arguments.done`` with that call's whole arguments,
``response.output_item.done`` — then ``response.completed`` (or ``incomplete`` / ``failed``) with them all.

The answer's text is one ``message`` item (a chat answer has one content string), wherever it falls among the calls.
A call's ``call_id`` is fixed when its item is added (the SDK matches the done item to the added one by it); a
name that only arrives in a later fragment is filled in before the done events.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tierwise.apis.responses import _call_item, _finish, _message_item, _shell, usage_json
from tierwise.errors import APIError
from tierwise.types import JSON, Usage


class ResponseEvents:
    """See the module docstring."""

    def __init__(self, resp_id: str, model: str, raw: JSON) -> None:
        self.resp = _shell(raw, resp_id, model, int(time.time()), "in_progress")
        self.key = resp_id[5:]
        self.seq = 0
        self.items: list[JSON] = []  # every output item so far, by output_index (open ones in progress)
        self.text: list[str] = []
        self.message: int | None = None  # output index of the message item
        self.calls: dict[int, int] = {}  # OpenAI tool_calls index -> output index
        self.finish: str | None = None

    def _event(self, etype: str, **fields: Any) -> bytes:
        data = {"type": etype, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + etype.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> bytes:
        return (self._event("response.created", response=self.resp)
                + self._event("response.in_progress", response=self.resp))

    def _add(self, item: JSON) -> tuple[int, bytes]:
        index = len(self.items)
        self.items.append(item)
        return index, self._event("response.output_item.added", output_index=index, item=dict(item))

    def _text(self, text: str) -> bytes:
        out = b""
        if self.message is None:
            item = _message_item(f"msg_{self.key}_{len(self.items)}", "", "in_progress")
            self.message, out = self._add(item)
            out += self._event("response.content_part.added", item_id=item["id"], output_index=self.message,
                               content_index=0, part={"type": "output_text", "text": "", "annotations": []})
        self.text.append(text)
        return out + self._event("response.output_text.delta", item_id=self.items[self.message]["id"],
                                 output_index=self.message, content_index=0, delta=text, logprobs=[])

    def _tool(self, tc: JSON) -> bytes:
        fn: JSON = tc["function"] if isinstance(tc.get("function"), dict) else {}
        i = tc.get("index", 0)
        out = b""
        n = self.calls.get(i)
        if n is None:
            k = len(self.items)
            given = tc.get("id")
            call_id = given if isinstance(given, str) and given else f"call_{self.key}_{k}"
            n, out = self._add(_call_item(f"fc_{self.key}_{k}", call_id, fn.get("name") or "", "", "in_progress"))
            self.calls[i] = n
        item = self.items[n]
        if not item["name"] and isinstance(fn.get("name"), str):
            item["name"] = fn["name"]
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            out += self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=n,
                               delta=args)
        return out

    def feed(self, chunk: JSON) -> bytes:
        choices = chunk.get("choices") or ()
        if not choices:
            return b""
        choice = choices[0]
        delta = choice.get("delta") or {}
        out = b""
        text = delta.get("content")
        if isinstance(text, str) and text:
            out += self._text(text)
        for tc in delta.get("tool_calls") or ():
            if isinstance(tc, dict):
                out += self._tool(tc)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return out

    def _close_all(self) -> bytes:
        """The done events of every item, in output order; ``self.items`` then holds the finished items."""
        out = b""
        for index, item in enumerate(self.items):
            if item["type"] == "message":
                text = "".join(self.text)
                part = {"type": "output_text", "text": text, "annotations": []}
                done = _message_item(item["id"], text)
                out += (self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                    content_index=0, text=text, logprobs=[])
                        + self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))
            else:
                done = {**item, "status": "completed"}
                out += self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   name=item["name"], arguments=item["arguments"])
            self.items[index] = done
            out += self._event("response.output_item.done", output_index=index, item=done)
        return out

    def end(self, usage: Usage, error: APIError | None) -> bytes:
        out = self._close_all()
        self.resp["output"] = self.items
        self.resp["usage"] = usage_json(usage)
        if error is not None:
            self.resp["status"] = "failed"
            self.resp["error"] = {"code": "server_error", "message": error.message}
            return out + self._event("response.failed", response=self.resp)
        _finish(self.resp, self.finish)
        name = "response.completed" if self.resp["status"] == "completed" else "response.incomplete"
        return out + self._event(name, response=self.resp)
