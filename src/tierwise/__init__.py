"""tierwise: an LLM router and cost gateway.

Public API: :class:`Router` (in-process use), :func:`load_config`, :class:`APIError`.
"""

from tierwise.config.load import ConfigError, load_config
from tierwise.errors import APIError
from tierwise.router import Router

__version__ = "0.1.0"
__all__ = ["APIError", "ConfigError", "Router", "__version__", "load_config"]
