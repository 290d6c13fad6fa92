"""Pure translation between the client APIs tierwise serves besides Chat Completions and its internal request.

The engine routes one shape of request: an OpenAI chat request. Requests arriving as Anthropic Messages
(:mod:`tierwise.apis.messages`) or OpenAI Responses (:mod:`tierwise.apis.responses`) are translated into it, and
the (OpenAI-shaped) answers and stream chunks are translated back. Embeddings (:mod:`tierwise.apis.embeddings`)
have no chat shape at all and are checked, priced and booked on their own. No I/O here: the HTTP side is
:mod:`tierwise.gateway.dialects` and the three ``*_api`` gateway modules.
"""
