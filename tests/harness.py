"""A real tierwise gateway on a loopback port, run in a background thread (its own event loop).

Tests talk to it over real HTTP with the official ``openai`` client; the fake upstreams it calls are real HTTP
servers too. ``svc`` gives tests access to the service (ledger writer, health) for assertions.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from aiohttp import web

from tierwise.config import TierwiseConfig, load_config_text
from tierwise.gateway.app import create_app
from tierwise.service import Tierwise


class GatewayServer:
    def __init__(self, cfg: TierwiseConfig) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="gateway-under-test")
        self.svc: Tierwise | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> GatewayServer:
        self.thread.start()

        async def up() -> None:
            self.svc = Tierwise(self.cfg)
            self.runner = web.AppRunner(create_app(self.svc), handler_cancellation=True, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._run(up())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def flush_ledger(self) -> None:
        assert self.svc is not None
        self.svc.ledger.flush()

    def rows(self) -> list[dict]:
        """Every ledger row so far, oldest first."""
        assert self.svc is not None
        self.flush_ledger()
        return list(self.svc.ledger.store.iter_rows(None, None))

    def stop(self) -> None:
        if self.runner is not None:
            self._run(self.runner.cleanup())
            self.runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def config_for(upstream_url: str, tmp: Path, extra: str = "", anthropic_url: str | None = None) -> TierwiseConfig:
    """A test config: three priced models on the fake OpenAI upstream (+ one Anthropic model when given)."""
    anth = ""
    anth_model = ""
    if anthropic_url:
        anth = f'  anth: {{format: anthropic, base_url: "{anthropic_url}", api_key: test-anthropic-key, timeout_s: 2}}\n'
        anth_model = "  claude: {provider: anth, upstream: claude-test, price: {input: 3, output: 15, cache_read: 0.3, cache_write: 3.75}}\n"
    text = f"""
server: {{request_deadline_s: 10}}
ledger: {{backend: sqlite, path: "{tmp / 'ledger.db'}", flush_interval_ms: 20}}
retry: {{max_retries: 2, base_delay_ms: 5, max_delay_ms: 20, max_retry_after_s: 2, cooldown_failures: 3, cooldown_s: 30}}
providers:
  fake: {{format: openai, base_url: "{upstream_url}", api_key: sk-test-secret-123, timeout_s: 2}}
{anth}models:
  small: {{provider: fake, upstream: small-up, price: {{input: 0.1, output: 0.4, cache_read: 0.025}}}}
  large: {{provider: fake, upstream: large-up, price: {{input: 2.5, output: 10, cache_read: 1.25}}}}
  thinker: {{provider: fake, upstream: thinker-up, reasoning: true, completion_floor: 4096, price: {{input: 1.1, output: 4.4}}}}
  fb: {{provider: fake, upstream: fb-up, price: {{input: 0.05, output: 0.2}}}}
{anth_model}tiers:
  label: {{description: "emit one label", models: [small], policy: priority}}
  chat: {{description: "helpful reply", models: [large, small], policy: priority}}
  cheap: {{models: [large, small], policy: cheapest}}
  think: {{models: [thinker], policy: priority}}
{extra}default_tier: chat
fallback_model: fb
"""
    return load_config_text(text, env={})
