"""Exported modules must stand alone: import without the project, same count, same outputs."""

import subprocess
import sys
import textwrap

import pytest
import torch

from space import ZOO, build, export_module, param_count

# Runs in a fresh interpreter with the project's packages made unimportable, so the
# exported module can only work if it needs nothing but torch.
STANDALONE = textwrap.dedent(
    """
    import sys
    sys.modules["space"] = None
    sys.modules["search"] = None
    sys.path.insert(0, sys.argv[1])
    import torch
    module = __import__(sys.argv[2])
    net = module.Net()
    count = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert count == module.PARAMS, (count, module.PARAMS)
    print(count)
    if len(sys.argv) > 3:
        x = torch.load(sys.argv[3])
        expected = torch.load(sys.argv[4])
        loaded = module.load()
        assert not loaded.training
        assert torch.allclose(loaded(x), expected, atol=1e-5), "outputs differ"
        print("outputs match")
    """
)


def run_standalone(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", STANDALONE, *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_exports_import_standalone_and_match(name, tmp_path):
    torch.manual_seed(0)
    net = build(ZOO[name])
    # Move BN statistics away from their defaults so that loading them actually matters.
    net.train()
    with torch.no_grad():
        net(torch.rand(64, 1, 28, 28))
    net.eval()
    x = torch.rand(5, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    torch.save(net(x).detach(), tmp_path / "expected.pt")
    metrics = {"test_accuracy": [99.1, 99.3], "test_accuracy_mean": 99.2, "epochs": 15}
    path = export_module(
        ZOO[name], tmp_path / f"{name}.py", state_dict=net.state_dict(), metrics=metrics
    )

    source = path.read_text()
    assert "import space" not in source and "from space" not in source
    assert "99.20%" in source  # the docstring carries the measured figures
    out = run_standalone(str(tmp_path), name, str(tmp_path / "x.pt"), str(tmp_path / "expected.pt"))
    assert out.split() == [str(param_count(ZOO[name])), "outputs", "match"]


def test_untrained_export_has_empty_metrics_and_no_weights(tmp_path):
    path = export_module(ZOO["ref7676"], tmp_path / "plain.py")
    assert not (tmp_path / "plain.pt").exists()
    assert run_standalone(str(tmp_path), "plain").strip() == "7676"
    assert "METRICS = {}" in path.read_text()


def test_export_refuses_to_overwrite_unless_forced(tmp_path):
    target = tmp_path / "net.py"
    export_module(ZOO["ref7676"], target)
    before = target.read_text()
    with pytest.raises(FileExistsError, match="--force"):
        export_module(ZOO["ref13010"], target)
    assert target.read_text() == before
    export_module(ZOO["ref13010"], target, force=True)
    assert "PARAMS = 13010" in target.read_text()


def test_export_leaves_nothing_behind_when_weights_do_not_save(tmp_path):
    with pytest.raises(AttributeError):
        export_module(ZOO["ref7676"], tmp_path / "broken.py", state_dict={"w": object()})
    assert list(tmp_path.iterdir()) == []


def test_exported_source_is_lint_clean(tmp_path):
    ruff = pytest.importorskip("ruff")
    del ruff
    path = export_module(ZOO["ref18594"], tmp_path / "lint_me.py")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--line-length", "100", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout
