"""HTTP front end: the OpenAI-compatible API over aiohttp."""

from tierwise.gateway.app import create_app

__all__ = ["create_app"]
