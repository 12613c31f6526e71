"""Your own model: ``budgetnas check`` and ``budgetnas train FILE.py:Class``.

The checks run in-process through ``search.cli.main`` (fast) on reference nets and on
small modules written to a temporary folder; one case runs the console script in a real
process, and one trains a module of yours on a few hundred real MNIST images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import test_space
import torch
from hypothesis import HealthCheck, given, settings
from real_mnist import DATA, needs_data

from search.cli import main
from search.errors import UsageError
from search.own_model.check import (
    check,
    inspect_target,
    measure_macs,
    parse_require_forbid,
)
from search.own_model.target import Target, load_target
from space import ZOO, SpecError, analyse, build, export_module, normalise

MODELS = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Tidy(nn.Module):
        # BatchNorm, dropout, a 1x1 conv head and global average pooling: no FC layer
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(8, 16, 3, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.drop = nn.Dropout2d(0.1)
            self.head = nn.Conv2d(16, 10, 1)
            self.gap = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            x = self.pool(F.relu(self.bn1(self.conv1(x))))
            x = self.drop(F.relu(self.bn2(self.conv2(x))))
            return self.gap(self.head(x)).flatten(1)


    class Plain(nn.Module):
        # no BatchNorm, functional dropout and pooling, flatten into a linear layer
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3)
            self.conv2 = nn.Conv2d(4, 8, 3, dilation=2)
            self.fc = nn.Linear(8 * 11 * 11, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
            x = F.dropout(x, 0.2, self.training)
            return self.fc(x.flatten(1))


    class MeanPooled(nn.Module):
        # GAP written as a mean over the map
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 5, stride=2)

        def forward(self, x):
            return self.conv(x).mean((2, 3))


    class Branches(nn.Module):
        # two convs read the same tensor: the receptive field is not one chain
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(1, 4, 5, padding=2)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = torch.cat([self.a(x), self.b(x)], 1)
            return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


    class Residual(nn.Module):
        # a skip connection: the deeper path sets the receptive field
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(4, 10)

        def forward(self, x):
            y = F.relu(self.a(x))
            y = y + self.b(y)
            return self.head(F.avg_pool2d(y, 28).flatten(1))


    class NeedsWidth(nn.Module):
        def __init__(self, width):
            super().__init__()


    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            raise RuntimeError("no weights file")


    class FiveClasses(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :5]


    class WrongInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))


    class EvalOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            if self.training:
                raise RuntimeError("call .eval() first")
            return self.fc(x.flatten(1))


    NOT_A_CLASS = 3
    """
)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(MODELS)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, out: str, err: str, hint: str) -> None:
    assert code == 2, (out, err)
    assert out == ""
    assert err.count("\n") == 1, err  # exactly one line, no traceback
    assert err.startswith("budgetnas check: error: "), err
    assert hint in err, err


# --- reference nets and specs --------------------------------------------------------


def test_check_a_reference_net_that_obeys_every_rule(capsys):
    argv = ["check", "ref14874", "--budget", "20000", "--require", "bn,dropout,gap"]
    code, out, _ = run([*argv, "--forbid", "fc"], capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "ref14874 (reference net)"
    assert "trainable parameters  14,874" in out
    assert "BatchNorm             yes: 5 x BatchNorm2d" in out
    assert "dropout               yes: 2 x Dropout2d" in out
    assert "global avg pooling    yes: average over the 8x8 map" in out
    assert "fully connected       no" in out
    assert "receptive field       26x26 (from the spec)" in out
    assert "MACs per image        1,963,392" in out
    assert "output shape          1x10 for a 1x28x28 input" in out
    assert lines[-1] == "check passed: 5 rule(s)"


def test_a_failing_rule_exits_1_and_names_the_rule(capsys):
    argv = ["check", "ref19354", "--budget", "15000", "--require", "bn,gap", "--forbid", "fc"]
    code, out, err = run(argv, capsys)
    assert code == 1, (out, err)
    assert err == ""
    assert "--budget 15,000       FAIL: 19,354 parameters, 4,354 over it" in out
    assert "--require bn          pass: 5 x BatchNorm2d" in out
    assert "--require gap         FAIL: no global average pooling" in out
    assert "--forbid fc           FAIL: it has Linear 784 -> 10" in out
    assert out.splitlines()[-1] == "check failed: --budget 15,000, --require gap, --forbid fc"


def test_no_rules_just_reports(capsys):
    code, out, _ = run(["check", "ref7676"], capsys)
    assert code == 0
    assert "check" not in out.splitlines()[-1]  # no verdict line without rules


def test_spec_json_and_budgetnas_export_are_checked_from_their_spec(tmp_path, capsys):
    (tmp_path / "net.json").write_text(json.dumps(ZOO["ref19354"]))
    export_module(ZOO["ref13010"], tmp_path / "exported.py")
    for target, kind, params in [
        (tmp_path / "net.json", "spec", "19,354"),
        (tmp_path / "exported.py", "budgetnas export", "13,010"),
    ]:
        code, out, _ = run(["check", str(target)], capsys)
        assert code == 0
        assert out.splitlines()[0] == f"{target} ({kind})"
        assert f"trainable parameters  {params}" in out
        assert "(from the spec)" in out


def test_load_target_gives_the_spec_or_the_class(models):
    assert load_target("ref7676").spec == ZOO["ref7676"]
    target = load_target(f"{models}:Tidy")
    assert not target.is_spec and target.cls.__name__ == "Tidy"
    assert isinstance(target.build(), torch.nn.Module)


def test_a_bad_spec_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"blocks": [], "head": {"type": "gap_conv"}}')
    with pytest.raises(SpecError, match=r"bad\.json: spec: 'blocks' must be a non-empty list"):
        load_target(str(tmp_path / "bad.json"))


# --- modules of yours ----------------------------------------------------------------


def test_a_tidy_module_passes_the_usual_rules(models, capsys):
    argv = ["check", f"{models}:Tidy", "--budget", "8000", "--require", "bn,dropout,gap"]
    code, out, _ = run([*argv, "--forbid", "fc"], capsys)
    assert code == 0, out
    net = load_target(f"{models}:Tidy").build()
    params = sum(p.numel() for p in net.parameters())
    assert out.splitlines()[0] == f"{models}:Tidy (your module)"
    assert f"trainable parameters  {params:,}" in out
    assert "yes: 2 x BatchNorm2d" in out
    assert "yes: 1 x Dropout2d" in out
    assert "yes: average over the 12x12 map" in out
    # conv 3x3 (3), max-pool 2 (4, jump 2), conv 3x3 (8), 1x1 head (8), then the GAP
    assert "receptive field       8x8 (traced through the conv and pool layers)" in out
    assert f"MACs per image        {measure_macs(net):,}" in out
    # conv1 8 x 28 x 28 + conv2 16 x 12 x 12 + head 10 x 12 x 12
    assert "activations           10,016 per image" in out


def test_a_plain_module_fails_them(models, capsys):
    argv = ["check", f"{models}:Plain", "--require", "bn,dropout,gap", "--forbid", "fc"]
    code, out, _ = run(argv, capsys)
    assert code == 1
    assert "--require bn          FAIL: no BatchNorm" in out
    assert "--require dropout     pass: dropout called in forward" in out  # F.dropout
    assert "--require gap         FAIL: no global average pooling" in out
    assert "--forbid fc           FAIL: it has Linear 968 -> 10" in out
    # conv 3x3 (3), conv 3x3 dilation 2 (7), max-pool 2 (8): functional layers count too
    assert "receptive field       8x8 (traced" in out
    assert out.splitlines()[-1] == "check failed: --require bn, --require gap, --forbid fc"


@pytest.mark.parametrize(
    ("name", "gap", "receptive_field"),
    [
        ("MeanPooled", "average over the 12x12 map", 5),
        ("Residual", "average over the 28x28 map", 5),
        ("Branches", "average over the 28x28 map", None),
    ],
)
def test_gap_and_receptive_field_however_forward_writes_them(models, name, gap, receptive_field):
    inspection = inspect_target(load_target(f"{models}:{name}"))
    assert inspection.found["gap"] == gap
    assert inspection.receptive_field == receptive_field
    if receptive_field is None:
        assert inspection.rf_note == "two layers read the same tensor (parallel branches)"


def test_traced_figures_agree_with_the_reference_specs():
    for name, spec in ZOO.items():
        inspection = inspect_target(Target(name, "reference net", spec=spec))
        traced = inspect_target(_module_target(spec))
        analysis = analyse(spec)
        assert traced.params == inspection.params == analysis.params, name
        assert traced.macs == analysis.macs, name
        assert traced.activations == analysis.activations, name
        assert traced.receptive_field == analysis.receptive_field, name
        assert traced.found == inspection.found, name


def _module_target(spec: dict) -> Target:
    """A spec's module seen as a module of yours: everything traced, nothing from the spec."""

    class Built(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build(spec)

        def forward(self, x):
            return self.net(x)

    return Target("built", "your module", path=Path(__file__), cls=Built)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(test_space.specs())
def test_tracing_a_built_spec_gives_the_specs_figures(spec):
    try:
        analysis = analyse(spec)
    except SpecError:
        return
    spec = normalise(spec)
    traced = inspect_target(_module_target(spec))
    assert traced.receptive_field == analysis.receptive_field
    assert traced.macs == analysis.macs
    assert traced.activations == analysis.activations
    assert traced.params == analysis.params
    head, blocks = spec["head"], spec["blocks"]
    pooled_map = analysis.shapes[-1][1] * analysis.shapes[-1][2] > 1
    assert traced.has("gap") == (head["type"] != "flatten_linear" and pooled_map)
    assert traced.has("fc") == (head["type"] in ("gap_linear", "flatten_linear"))
    assert traced.has("bn") == any(b.get("bn", False) for b in blocks)
    dropouts = [b.get("dropout", 0) for b in blocks] + [head["dropout"]]
    assert traced.has("dropout") == any(p > 0 for p in dropouts)


# --- bad input: one line, exit 2 -----------------------------------------------------


@pytest.mark.parametrize(
    ("target", "extra", "hint"),
    [
        ("missing.py:Net", [], "no file missing.py; pass FILE.py:ClassName"),
        ("nothing-here", [], "is neither a reference net"),
        ("{models}:Nope", [], "defines no Nope; nn.Module classes there: Tidy, Plain"),
        ("{models}:NOT_A_CLASS", [], "is not an nn.Module class"),
        ("{models}:NeedsWidth", [], "NeedsWidth() needs argument(s) width: give them defaults"),
        ("{models}:Broken", [], "Broken() failed: RuntimeError: no weights file"),
        ("{models}:FiveClasses", [], "maps a 2x1x28x28 batch to 2x5; budgetnas needs N x 10"),
        ("{models}:WrongInput", [], "WrongInput failed on a 2x1x28x28 batch: RuntimeError"),
        ("{models}", [], "has no SPEC dict, so it is not a budgetnas export; for your own model"),
        ("{models}:EvalOnly", [], "failed when run to measure it (RuntimeError: call .eval()"),
        ("{folder}/syntax.py:Net", [], "cannot import"),
        ("{folder}/raises.py:Net", [], "cannot import"),
        ("ref7676", ["--require", "bn,batchnorm"], "--require: unknown rule 'batchnorm'"),
        ("ref7676", ["--require", "gap", "--forbid", "fc,gap"], "both in --require and in"),
        ("ref7676", ["--budget", "0"], "--budget: must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models, target, extra, hint, capsys):
    folder = models.parent
    (folder / "syntax.py").write_text("class Net(:\n    pass\n")
    (folder / "raises.py").write_text("import sys\nraise ImportError('needs\\nsomething')\n")
    argv = ["check", target.format(models=models, folder=folder), *extra]
    try:
        code, out, err = run(argv, capsys)
    except SystemExit as exit:  # argparse's own errors
        code, (out, err) = exit.code, capsys.readouterr()
    assert_usage_error(code, out, err, hint)


def test_the_error_of_a_failing_import_says_what_to_do(models):
    (models.parent / "syntax.py").write_text("class Net(:\n    pass\n")
    with pytest.raises(UsageError, match=r"SyntaxError.*; fix the file \(python .*syntax\.py"):
        load_target(f"{models.parent / 'syntax.py'}:Net")


def test_rules_parse_and_refuse():
    assert parse_require_forbid(" BN, gap,bn", "fc") == (("bn", "gap"), ("fc",))
    assert parse_require_forbid("", None) == ((), ())
    with pytest.raises(UsageError, match="rules are bn, dropout, gap, fc"):
        check("ref7676", require="bn,residual")


def cli_command() -> list[str]:
    script = shutil.which("budgetnas")
    return [script] if script else [sys.executable, "-m", "search.cli"]


def test_exit_codes_in_a_real_process(models):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv, code in [
        ([f"{models}:Tidy", "--require", "bn,gap", "--forbid", "fc"], 0),
        ([f"{models}:Plain", "--require", "bn"], 1),
        ([f"{models}:NeedsWidth"], 2),
    ]:
        done = subprocess.run(
            [*cli_command(), "check", *argv], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr
        if code == 2:
            assert done.stderr.count("\n") == 1 and done.stdout == ""


# --- training a module of yours ------------------------------------------------------


def test_train_save_refuses_an_existing_source_copy_before_training(
    models, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGETNAS_DATA", str(tmp_path / "no-data-here"))
    (tmp_path / "mine_model.py").write_text("KEEP = 1\n")
    code = main(["train", f"{models}:Tidy", "--save", "mine.py"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert (
        err
        == "budgetnas train: error: mine_model.py already exists; pass --force to overwrite it\n"
    )
    assert (tmp_path / "mine_model.py").read_text() == "KEEP = 1\n"
    assert not (tmp_path / "mine.py").exists()


@needs_data
def test_train_your_module_with_two_seeds_and_save_it(models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", f"{models}:Tidy", "--train-subset", "300", "--epochs", "1", "--seeds", "2"]
    code = main([*argv, "--data-dir", DATA, "--device", "cpu", "--save", "mine.py"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"training {models}:Tidy: ")
    assert "RF 8," in lines[0] and "300 training images, 1 epochs, seeds 0-1, cpu" in lines[0]
    finals = [line for line in lines if line.startswith("final-epoch test accuracy: ")]
    assert [line.split("(seed ")[1][0] for line in finals] == ["0", "1"]
    accuracies = [float(line.split(": ")[1].split("%")[0]) for line in finals]
    mean = sum(accuracies) / 2
    assert (
        lines[-2]
        == f"2 seeds: mean {mean:.2f}%, min {min(accuracies):.2f}% (final-epoch test accuracy of each run)"
    )
    assert (
        lines[-1] == "wrote mine.py (load() and METRICS), mine_model.py (your source) and mine.pt"
    )
    assert (tmp_path / "mine_model.py").read_text() == models.read_text()

    # The loader works without budgetnas, from any folder.
    script = (
        "import sys; sys.modules['space'] = None; sys.modules['search'] = None; "
        f"sys.path.insert(0, {str(tmp_path)!r}); import torch, mine; net = mine.load(); "
        "assert not net.training; print(type(net).__name__, tuple(net(torch.rand(3, 1, 28, 28)).shape), "
        "mine.PARAMS); print(mine.METRICS)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=120
    )
    assert done.returncode == 0, done.stderr
    first, metrics = done.stdout.splitlines()
    params = inspect_target(load_target(f"{models}:Tidy")).params
    assert first == f"Tidy (3, 10) {params}"
    metrics = eval(metrics)  # a plain dict literal
    assert metrics["test_accuracy"] == accuracies
    assert metrics["seeds"] == [0, 1]
    assert metrics["test_accuracy_mean"] == pytest.approx(mean, abs=1e-4)
    assert metrics["test_accuracy_min"] == min(accuracies)
    # the median seed's weights: the lower of two
    assert metrics["weights_test_accuracy"] == min(accuracies)
    assert metrics["weights_seed"] == accuracies.index(min(accuracies))
    assert metrics["epochs"] == 1 and metrics["train_subset"] == 300
