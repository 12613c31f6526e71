"""Every shipped module in models/ stands alone, fits its budget, passes the checks that
hand-made MNIST projects run in their CI, and its weights score what it says they score."""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from real_mnist import DATA, needs_data
from torch import nn

from search.cli import main
from search.engine.data import confirm_data
from search.engine.train import evaluate
from search.study.confirm import confirmations
from space import ZOO, normalise

ROOT = Path(__file__).parents[1]
MODELS = sorted(p for p in (ROOT / "models").glob("*.py") if p.stem != "__init__")


def load_module(path: Path):
    sys.path.insert(0, str(path.parent))
    try:
        return __import__(path.stem)
    finally:
        sys.path.remove(str(path.parent))


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_imports_standalone_within_its_budget(path):
    script = (
        "import sys; sys.modules['space'] = None; sys.modules['search'] = None; "
        f"sys.path.insert(0, {str(path.parent)!r}); m = __import__({path.stem!r}); "
        "net = m.load(); print(sum(p.numel() for p in net.parameters() if p.requires_grad), "
        "m.PARAMS, m.METRICS['budget'])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    counted, declared, budget = map(int, result.stdout.split())
    assert counted == declared <= budget


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_passes_the_hand_made_projects_checks(path):
    module = load_module(path)
    net = module.load()
    layers = list(net.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in layers)
    uses_dropout = any(
        b.get("dropout", 0) > 0 for b in [*module.SPEC["blocks"], module.SPEC["head"]]
    )
    assert any(isinstance(m, nn.Dropout) for m in layers) == uses_dropout
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in layers)
    assert net(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    metrics = module.METRICS
    assert metrics["test_accuracy_mean"] == pytest.approx(
        sum(metrics["test_accuracy"]) / len(metrics["test_accuracy"]), abs=1e-3
    )
    assert metrics["weights_test_accuracy"] in metrics["test_accuracy"]


@needs_data
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_weights_reproduce_the_recorded_test_accuracy(path):
    module = load_module(path)
    _, test = confirm_data(DATA, "cpu")
    assert abs(evaluate(module.load(), test) - module.METRICS["weights_test_accuracy"]) <= 0.01


def _searched(path: Path) -> bool:
    return "study" in load_module(path).METRICS


SEARCHED = [p for p in MODELS if _searched(p)]  # exported from a search, not a hand-made net


@pytest.mark.parametrize("path", SEARCHED, ids=[p.stem for p in SEARCHED])
def test_a_searched_model_is_not_one_of_the_reference_nets(path):
    """Found by the search itself, not a hand-made net that --warm-start handed it."""
    spec = normalise(load_module(path).SPEC)
    assert [name for name, reference in ZOO.items() if normalise(reference) == spec] == []


@pytest.mark.parametrize("path", SEARCHED, ids=[p.stem for p in SEARCHED])
def test_its_committed_search_exports_it_again_byte_for_byte(path, tmp_path):
    """The study behind a shipped model is committed under results/ with the weights its
    export needs: exporting its trial from there gives the same module and weights."""
    metrics = load_module(path).METRICS
    # Several searches at one budget share the study name, each in its own file: the one
    # behind this model is the one that confirmed its trial with these figures.
    holding = [
        db
        for db in sorted((ROOT / "results").glob("*.db"))
        if _confirmed_there(db, metrics["study"], metrics["trial"]) == metrics["test_accuracy"]
    ]
    assert holding, f"no study {metrics['study']!r} with this confirmation under results/"
    out = tmp_path / path.name
    argv = ["export", metrics["study"], "--trial", str(metrics["trial"]), "--out", str(out)]
    argv += ["--storage", f"sqlite:///{holding[0]}", "--artifacts", str(ROOT / "results/artifacts")]
    assert main(argv) == 0
    assert out.read_text() == path.read_text()
    assert out.with_suffix(".pt").read_bytes() == path.with_suffix(".pt").read_bytes()


def _confirmed_there(db: Path, study_name: str, trial: int) -> list[float] | None:
    """The test accuracies a study in ``db`` recorded when it confirmed ``trial``."""
    summaries = optuna.get_all_study_summaries(f"sqlite:///{db}")
    if study_name not in {s.study_name for s in summaries}:
        return None
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    confirmation = confirmations(study).get(trial)
    return confirmation.test_accuracy if confirmation else None
