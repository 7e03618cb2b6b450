"""Errors the CLI turns into one clear line (kept apart from config.py so importing it stays light)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration: the message names the key, the value and what is allowed, after where it was set
    (`source`: the YAML file, or the `--set` argument that gave the key). `keys` are the keys it is about, the
    one to blame first, so that the error can be pinned on the argument that set one of them."""

    def __init__(self, message: str, *, source: str | None = None, keys: tuple[str, ...] = ()):
        super().__init__(f"{source}: {message}" if source else message)
        self.message, self.source, self.keys = message, source, tuple(keys)

    def set_by(self, source: str) -> ConfigError:
        return ConfigError(self.message, source=source, keys=self.keys)


class RunDirLocked(Exception):
    """Another run holds the run directory (`pipeline.lock`); the message names it and its holder."""
