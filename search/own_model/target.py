"""What ``budgetnas check`` and ``budgetnas train`` are pointed at: the TARGET argument.

A TARGET is one of

- a reference net's name (``ref7676``, ... see ``space.ZOO``),
- a spec ``.json`` file,
- a module exported by budgetnas (a ``.py`` file with a ``SPEC`` dict),
- ``path/to/file.py:ClassName``: your own ``nn.Module``, any class whose constructor
  needs no arguments and whose ``forward`` maps N x 1 x 28 x 28 floats in [0, 1] (what
  ToTensor gives, not normalised) to N x 10 logits.

Your own module is imported from its file with importlib (its folder goes on
``sys.path`` while it loads, so it may import modules beside it), built once and run on
a small batch here, so that a file that does not import, a class that cannot be built
or an output of the wrong shape ends in a one-line ``UsageError`` before any training.

``save_own_model`` writes a trained module of yours for use elsewhere: a copy of its
source file, its weights, and a small loader module with ``Net``, ``load()``,
``PARAMS`` and ``METRICS``, like the standalone modules that budgetnas exports.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import os
import pprint
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from search.errors import UsageError
from space import ZOO, Spec, SpecError, build, from_json
from space.export import stage_file

PROBE_BATCH = 2
TARGET_FORMS = "a reference net, a spec .json, a budgetnas export .py or FILE.py:ClassName"


@dataclass(frozen=True)
class Target:
    """A loaded TARGET: a spec (reference net, .json, export) or a class of yours."""

    name: str  # as the user wrote it
    kind: str  # "reference net", "spec", "budgetnas export" or "your module"
    spec: Spec | None = None
    path: Path | None = None  # the source file of your module
    cls: type[nn.Module] | None = None

    @property
    def is_spec(self) -> bool:
        return self.spec is not None

    def build(self) -> nn.Module:
        """A fresh, untrained instance (seed torch first for a reproducible init)."""
        if self.spec is not None:
            return build(self.spec)
        assert self.cls is not None and self.path is not None
        with _on_path(self.path.parent):
            return self.cls()


def load_target(text: str) -> Target:
    """The TARGET ``text`` names, checked; bad input raises a one-line UsageError."""
    if text in ZOO:
        return Target(text, "reference net", spec=ZOO[text])
    file, class_name = _split(text)
    path = Path(file)
    if class_name is not None:
        return _load_class(text, path, class_name)
    if not path.is_file():
        raise UsageError(
            f"{text!r} is neither a reference net ({', '.join(ZOO)}) nor a file; "
            f"pass {TARGET_FORMS}"
        )
    if path.suffix == ".json":
        try:
            return Target(text, "spec", spec=from_json(path.read_text()))
        except SpecError as error:
            raise SpecError(f"{path}: {error}") from None
    if path.suffix == ".py":
        module = _import(path)
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, dict):
            classes = _module_classes(module)
            example = f"{path}:{classes[0]}" if classes else f"{path}:ClassName"
            raise UsageError(
                f"{path} has no SPEC dict, so it is not a budgetnas export; for your own "
                f"model pass {example}{_listing(classes)}"
            )
        return Target(text, "budgetnas export", spec=spec)
    raise UsageError(f"{text}: expected {TARGET_FORMS}")


def _split(text: str) -> tuple[str, str | None]:
    """``file.py:Class`` -> (file.py, Class); anything else -> (text, None)."""
    file, colon, name = text.rpartition(":")
    if colon and file.endswith(".py"):
        return file, name
    return text, None


def _load_class(text: str, path: Path, class_name: str) -> Target:
    if not class_name.isidentifier():
        raise UsageError(f"{text}: after the colon comes a class name, got {class_name!r}")
    if not path.is_file():
        raise UsageError(f"no file {path}; pass FILE.py:ClassName with the path to your model")
    module = _import(path)
    classes = _module_classes(module)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(f"{path} defines no {class_name}{_listing(classes)}")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UsageError(f"{path}:{class_name} is not an nn.Module class{_listing(classes)}")
    required = _required_arguments(cls)
    if required:
        raise UsageError(
            f"{class_name}() needs argument(s) {', '.join(required)}: give them defaults, "
            "or point at a class whose constructor takes none"
        )
    target = Target(text, "your module", path=path, cls=cls)
    _probe(target, class_name)
    return target


def _import(path: Path) -> ModuleType:
    """Run ``path`` as a fresh module; its failures become one-line UsageErrors."""
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"_budgetnas_target_{_identifier(path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up there
    try:
        with _on_path(resolved.parent):
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        sys.modules.pop(name, None)
        raise UsageError(
            f"cannot import {path}: {_one_line(error)}; fix the file "
            f"(python {path} shows the whole error) and run again"
        ) from None
    return module


def _probe(target: Target, class_name: str) -> None:
    """Build the class and run it once, so that bad input fails here in one line."""
    try:
        net = target.build()
    except Exception as error:
        raise UsageError(
            f"{class_name}() failed: {_one_line(error)}; its constructor must work with no arguments"
        ) from None
    batch = f"{PROBE_BATCH}x1x28x28"
    try:
        with torch.no_grad():
            out = net.eval()(torch.rand(PROBE_BATCH, 1, 28, 28))
    except Exception as error:
        raise UsageError(
            f"{class_name} failed on a {batch} batch: {_one_line(error)}; its forward must "
            "take N x 1 x 28 x 28 images"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise UsageError(
            f"{class_name} returned a {type(out).__name__} for a {batch} batch; "
            "its forward must return one tensor of N x 10 logits"
        )
    if tuple(out.shape) != (PROBE_BATCH, 10):
        shape = "x".join(str(n) for n in out.shape) or "a scalar"
        raise UsageError(
            f"{class_name} maps a {batch} batch to {shape}; budgetnas needs N x 10 logits "
            f"({PROBE_BATCH}x10 here)"
        )


def _required_arguments(cls: type) -> list[str]:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return []  # no signature to read; building it will tell
    return [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _module_classes(module: ModuleType) -> list[str]:
    """The nn.Module classes a module defines itself (not the ones it imports)."""
    return [
        name
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, nn.Module)
        and value.__module__ == module.__name__
    ]


def _listing(classes: list[str]) -> str:
    if not classes:
        return "; it defines no nn.Module class"
    return f"; nn.Module classes there: {', '.join(classes)}"


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """``folder`` first on sys.path for a while, so a module can import its neighbours."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


# --- saving a trained module of yours ------------------------------------------------


def own_model_files(path: Path) -> tuple[Path, Path, Path]:
    """(loader, source copy, weights) that ``save_own_model`` writes for ``path``."""
    return path, path.with_name(f"{path.stem}_model.py"), path.with_suffix(".pt")


def save_own_model(
    target: Target,
    path: str | Path,
    *,
    state_dict: dict[str, torch.Tensor],
    metrics: dict[str, Any],
    origin: str,
    force: bool = False,
) -> tuple[Path, Path, Path]:
    """Write a trained module of yours beside ``path`` (a .py) for use without budgetnas:

    - ``NAME_model.py``: a copy of your source file, as it was trained;
    - ``NAME.pt``: the weights (a state_dict);
    - ``NAME.py``: a loader, ``from NAME import load; net = load()``, with ``Net`` (your
      class), ``PARAMS`` and ``METRICS``.

    All three are staged under temporary names and renamed at the end, so a failure
    leaves nothing half-written; existing files are refused unless ``force``.
    """
    assert target.cls is not None and target.path is not None
    files = own_model_files(Path(path))
    loader, copy, weights = files
    existing = [str(p) for p in files if p.exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]} already exists; pass --force to overwrite it")
    source = _loader_source(
        loader.stem, copy.name, target.cls.__name__, target.path.name, metrics, origin
    )
    contents = {
        loader: source.encode(),
        copy: target.path.read_bytes(),
    }
    loader.parent.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for final, data in contents.items():
            staged.append((stage_file(final, lambda f, data=data: f.write(data)), final))
        cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
        staged.append((stage_file(weights, lambda f: torch.save(cpu, f)), weights))
    except OSError as error:
        for temp, _ in staged:
            os.unlink(temp)
        raise UsageError(
            f"cannot write {path}: {error.strerror or error}; pass another --save"
        ) from None
    for temp, final in staged:
        os.replace(temp, final)
    return files


def _summary(metrics: dict[str, Any]) -> str:
    accuracies = ", ".join(f"{a:.2f}" for a in metrics["test_accuracy"])
    return (
        f"Measured: mean test accuracy {metrics['test_accuracy_mean']:.2f}%, "
        f"min {metrics['test_accuracy_min']:.2f}%, per seed [{accuracies}], "
        f"final epoch of {metrics['epochs']}."
    )


def _loader_source(
    name: str,
    copy: str,
    class_name: str,
    original: str,
    metrics: dict[str, Any],
    origin: str,
) -> str:
    return f'''"""{name}: {class_name} from {original}, {metrics["params"]:,} parameters, trained by budgetnas.

{origin}

{_summary(metrics)}
Input: N x 1 x 28 x 28 floats in [0, 1] (what ToTensor gives). Output: N x 10 logits.
The class comes from {copy} beside this file, a copy of {original} as it was trained.

    from {name} import load
    net = load()              # {class_name} with the weights from {name}.pt, eval mode
    logits = net(images)
"""

import importlib.util
import sys
from pathlib import Path

import torch

PARAMS = {metrics["params"]}
METRICS = {pprint.pformat(metrics, sort_dicts=False, width=88, indent=1)}


def _source():
    path = Path(__file__).with_name({copy!r})
    spec = importlib.util.spec_from_file_location({Path(copy).stem!r}, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


Net = _source().{class_name}


def load(device="cpu"):
    """A Net in eval mode with the trained weights from the .pt file beside this module."""
    net = Net()
    weights = Path(__file__).with_suffix(".pt")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device).eval()
'''
