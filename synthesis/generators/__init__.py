"""The generators, and the synthesis section of the config assembled from them.

A generator is one module: its class (`@register("name")`) and its settings (a `GeneratorConfig` subclass, the
class's `config_class`), side by side. Importing this package imports every module in it and every module named by
an installed package under the entry-point group `cmr_synth.generators` (a lab's own generator, e.g.
`[options.entry_points] cmr_synth.generators = mygen = mylab.mygen`), which fills `synthesis.base.REGISTRY`; then
`SynthesisConfig` gets one section per registered generator, `synthesis.<name>`, so the YAML, its validation and the
documented `pipeline.yaml` know a new generator without an edit anywhere else.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from importlib.metadata import entry_points

from synthesis.base import REGISTRY
from synthesis.config import SynthesisSettings

PLUGIN_GROUP = "cmr_synth.generators"


def import_generators() -> None:
    """Import this package's modules, then the plugins' (each registers its generators on import)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        try:
            point.load()
        except Exception as exc:  # a broken plugin is named, not a bare traceback from deep inside it
            dist = getattr(point.dist, "name", "?")
            raise ImportError(f"generator plugin {point.name!r} = {point.value!r} (installed by {dist}, entry-point "
                              f"group {PLUGIN_GROUP}) failed to import: {type(exc).__name__}: {exc}") from exc


def assemble_config() -> type[SynthesisSettings]:
    """`SynthesisSettings` plus one section per registered generator, in name order."""
    sections = [(name, cls.config_class, dataclasses.field(default_factory=cls.config_class))
                for name, cls in sorted(REGISTRY.items())]
    return dataclasses.make_dataclass(
        "SynthesisConfig", sections, bases=(SynthesisSettings,),
        namespace={"__module__": __name__, "__doc__": "The synthesis stage: its own settings plus one section per registered generator."})


import_generators()
SynthesisConfig = assemble_config()

__all__ = ["PLUGIN_GROUP", "REGISTRY", "SynthesisConfig", "assemble_config", "import_generators"]
