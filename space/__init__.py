"""The search space: architecture specs and everything derived from them."""

from space.build import SpecNet, build
from space.export import export_module, module_source
from space.spec import (
    Analysis,
    Spec,
    SpecError,
    activation_count,
    analyse,
    from_json,
    mac_count,
    normalise,
    param_count,
    to_json,
)
from space.zoo import ZOO

__all__ = [
    "ZOO",
    "Analysis",
    "activation_count",
    "Spec",
    "SpecError",
    "SpecNet",
    "analyse",
    "build",
    "export_module",
    "from_json",
    "mac_count",
    "module_source",
    "normalise",
    "param_count",
    "to_json",
]
