"""Configuration: schema (pydantic) and loader (interpolation, cross-checks, every problem at once)."""

from tierwise.config.load import ConfigError, ConfigProblem, config_error, load_config, load_config_text
from tierwise.config.schema import (
    LedgerConfig,
    LocalTCO,
    ModelConfig,
    ProviderConfig,
    RetryConfig,
    ServerConfig,
    SessionConfig,
    TierConfig,
    TierwiseConfig,
    TokenPrice,
)

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "LedgerConfig",
    "LocalTCO",
    "ModelConfig",
    "ProviderConfig",
    "RetryConfig",
    "ServerConfig",
    "SessionConfig",
    "TierConfig",
    "TierwiseConfig",
    "TokenPrice",
    "config_error",
    "load_config",
    "load_config_text",
]
