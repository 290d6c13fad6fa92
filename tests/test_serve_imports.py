"""The serve path stays free of the lab: a real `tierwise serve` process answering a request through a priority tier
has imported neither ``tierwise.lab`` nor numpy (numpy is only for learned/semantic routing, the lab only for the
offline verbs). The lab verbs' parsers (``tierwise.cli_lab``) repeat a few defaults; they must match their owners."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.fakes.upstream import FakeUpstream
from tests.procs import SECRET, free_port, wait_ready, write_config


def test_serve_process_imports_neither_lab_nor_numpy(upstream: FakeUpstream, tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, upstream.base_url, port, f'{{backend: sqlite, path: "{tmp_path / "l.db"}"}}')
    dump = tmp_path / "modules.json"
    code = ("import atexit, json, sys\n"
            f"atexit.register(lambda: open({str(dump)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
            "from tierwise.cli import main\n"
            f"sys.exit(main(['serve', '--config', {str(cfg)!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"FAKE_KEY": SECRET, "PATH": "/usr/bin:/bin"})
    try:
        wait_ready(proc, port)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                       json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    modules = json.loads(dump.read_text())
    assert "tierwise.service" in modules and "tierwise.routing.engine" in modules  # the real serve path ran
    assert not [m for m in modules if m.startswith("tierwise.lab")]
    assert "numpy" not in modules


def test_cli_lab_defaults_match_their_owners() -> None:
    from tierwise import cli_lab
    from tierwise.embed import EMBEDDERS
    from tierwise.lab import calibrate, contextual_cli
    from tierwise.routing.learned import train

    assert cli_lab.CV_FOLDS == calibrate.CV_FOLDS
    assert cli_lab.ROUTER_KINDS == contextual_cli.ROUTER_KINDS
    assert (cli_lab.PROCEDURES, cli_lab.DEFAULT_PROCEDURE) == (contextual_cli.PROCEDURES,
                                                              contextual_cli.DEFAULT_PROCEDURE)
    assert (cli_lab.DEFAULT_ROUTER, cli_lab.DEFAULT_EMBEDDER) == (contextual_cli.DEFAULT_ROUTER,
                                                                  contextual_cli.DEFAULT_EMBEDDER)
    assert set(cli_lab.FITTER_KINDS) == set(train.FITTERS) and cli_lab.DEFAULT_KIND == train.DEFAULT_KIND
    assert cli_lab.CALIB_Z == train.CALIB_Z
    from tierwise.lab import crossfit

    assert crossfit.POINT_Z["families"] == cli_lab.FAMILIES_Z
    assert crossfit.CASCADE_POINT_Z["families"] == cli_lab.CASCADE_FAMILIES_Z
    assert tuple(cli_lab.EMBEDDERS) == tuple(EMBEDDERS)


def test_replay_is_not_a_configurable_provider_format(tmp_path: Path) -> None:
    """The lab's replay provider is injected into the service it evaluates, never named in a gateway config."""
    import pytest

    from tierwise.config.load import ConfigError, load_config_text

    text = ("providers:\n  r: {format: replay}\nmodels:\n  m: {provider: r, price: {input: 1, output: 1}}\n"
            "tiers:\n  t: {models: [m]}\ndefault_tier: t\nfallback_model: m\n")
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, env={})
    assert "providers.r.format" in str(exc.value)


def test_product_training_does_not_import_the_lab() -> None:
    code = ("import sys, tierwise.routing.learned.train, tierwise.routing.learned.gate_train, tierwise.outcomes, "
            "tierwise.quality_metrics; print([m for m in sys.modules if m.startswith('tierwise.lab')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
