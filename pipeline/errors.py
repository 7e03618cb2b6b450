"""Errors the CLI turns into one clear line (kept apart from config.py so importing it stays light)."""


class ConfigError(ValueError):
    """A bad configuration: the message names the key, the value and what is allowed."""


class RunDirLocked(Exception):
    """Another run holds the run directory (`pipeline.lock`); the message names it and its holder."""
