"""The agent's configuration: one TOML file, validated on load.

Every mistake becomes one line `FILE: key.path: what was expected`, and the CLI exits 78
(EX_CONFIG). Unknown keys are errors. Meters may name a profile (drivers/profiles.py); after
`load_config` every MeterConfig has its points resolved, so nothing downstream reads profiles.
"""

from agent.config.load import load_config
from agent.config.schema import (
    DATA_CODE,
    EX_CONFIG,
    AgentSection,
    Config,
    PlatformSection,
    ScheduleSection,
    SigningSection,
    StorageSection,
    WebSection,
)
from drivers.validation import ConfigError

__all__ = [
    "DATA_CODE",
    "EX_CONFIG",
    "AgentSection",
    "Config",
    "ConfigError",
    "PlatformSection",
    "ScheduleSection",
    "SigningSection",
    "StorageSection",
    "WebSection",
    "load_config",
]
