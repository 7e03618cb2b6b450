"""A setting's role, declared once on its config field (`metadata={"role": ...}`) and read by everything that
must know it: the cache keys of units and stages, the checks that let a checkpoint resume, and the docs
(`pipeline.yaml` says `[runtime]`).

- result (the default): changes what is computed; part of every key; a checkpoint resumes only under the same
  value.
- runtime: changes how fast or how visibly it is computed (device, loader workers, compile, progress bars,
  sample grids), never a number: left out of keys, so a run moved to a GPU keeps its cache, and checkpoints
  resume across it.
- resumable: changes the result, so it is in the keys, but a checkpoint may go on under a new value (e.g. a
  generator's `steps`: training simply continues).
"""
from __future__ import annotations

import dataclasses
from typing import Any

ROLE = "role"
RESULT, RUNTIME, RESUMABLE = "result", "runtime", "resumable"
# `metadata={"synthetic_only": True}`: a result setting that only arms with synthetic data read (the synthetic
# share): left out of the real arm's keys, so tuning it never retrains the real-only baseline.
SYNTHETIC_ONLY = "synthetic_only"
# `metadata={"keyed_unless_default": True}`: a result setting added after runs were cached; at its default (the
# behaviour before it existed) it is left out of keys, so those runs keep their cache.
KEYED_UNLESS_DEFAULT = "keyed_unless_default"


def role(f: dataclasses.Field) -> str:
    return f.metadata.get(ROLE, RESULT)


def names_with_role(section: Any, *roles: str) -> frozenset[str]:
    """The field names of a config dataclass (class or instance) whose role is one of `roles`."""
    return frozenset(f.name for f in dataclasses.fields(section) if role(f) in roles)


def synthetic_only(section: Any) -> frozenset[str]:
    """The field names of a config dataclass that only arms with synthetic data read."""
    return frozenset(f.name for f in dataclasses.fields(section) if f.metadata.get(SYNTHETIC_ONLY, False))


def result_settings(section: Any) -> Any:
    """A config section as plain data without its runtime settings, at every depth: what keys are made of."""
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        return {f.name: result_settings(getattr(section, f.name)) for f in dataclasses.fields(section)
                if role(f) != RUNTIME and not (f.metadata.get(KEYED_UNLESS_DEFAULT) and _at_default(section, f))}
    if isinstance(section, (list, tuple)):
        return [result_settings(v) for v in section]
    if isinstance(section, dict):
        return {k: result_settings(v) for k, v in section.items()}
    return section


def _at_default(section: Any, f: dataclasses.Field) -> bool:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return getattr(section, f.name) == default


def resumable_differences(saved: dict[str, Any], current: Any) -> list[str]:
    """The settings of `current` (a config dataclass) that differ from `saved` (its asdict in a checkpoint) and
    forbid resuming: every field but the runtime and resumable ones (a field only one side has counts too, except a
    `keyed_unless_default` one at its default that a checkpoint from before it lacks)."""
    allowed = set(names_with_role(current, RUNTIME, RESUMABLE))
    allowed |= {f.name for f in dataclasses.fields(current)
                if f.metadata.get(KEYED_UNLESS_DEFAULT) and f.name not in saved and _at_default(current, f)}
    now = dataclasses.asdict(current)
    return sorted(k for k in set(now) | set(saved) if k not in allowed and now.get(k) != saved.get(k))
