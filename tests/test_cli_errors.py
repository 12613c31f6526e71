"""Bad input through the real CLI: a one-line error that says what to do, exit code 2, no
traceback, and nothing written.

Most cases call ``search.cli.main`` in-process (fast); a handful run the ``budgetnas``
console script in a subprocess to prove the same end to end. Studies are built directly
in a real SQLite storage (with a real weights artifact), so no case trains anything
except the two that need real MNIST.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState, create_trial
from real_mnist import DATA, needs_data

from search.cli import main
from search.engine.train import Recipe
from space import ZOO, analyse, build, normalise

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"  # nothing listens on port 1
HAS_POSTGRES_DRIVER = any(importlib.util.find_spec(name) for name in ("psycopg", "psycopg2"))
SETTINGS = {
    "budget": 8000,
    "epochs": 1,
    "target": 99.4,
    "val_size": 500,
    "train_subset": 500,
    "seed": 0,
}
MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]

# What each kind of error must tell the user to do (regular expressions, any case).
HINT = {
    "budget": r"--budget: must be a positive integer",
    "epochs": r"--epochs: must be a positive integer",
    "target": r"--target: must be a percentage in \(0, 100\]",
    "pruner": r"--pruner must be one of rungs, median, halving, hyperband, none",
    "device": r"device must be auto, cpu or cuda",
    "no cuda": r"CUDA is not available here; use cpu or auto",
    "workers": r"--workers: must be a positive integer",
    "malformed url": r"is not a database URL; use e\.g\. sqlite:///studies\.db",
    "sqlite url": r"write SQLite URLs as sqlite:///path/to/file\.db",
    "postgres scheme": r"names the scheme postgresql://, not postgres://",
    "unreachable": r"check the URL and that the database server is running"
    if HAS_POSTGRES_DRIVER
    else r"needs a database driver that is not installed \(psycopg2?\); install it",
    "no storage": r"no storage at studies\.db; run 'budgetnas search' first or pass --storage",
    "no folder": r"folder .* does not exist",
    "not sqlite": r"is not an SQLite database; point --storage at a \.db file",
    "folder storage": r"is a folder, not an SQLite database; point --storage",
    "no optuna": r"holds no Optuna studies; point --storage at the database",
    "no study": r"no study named 'nope'.*check the name, or --storage",
    "no completed": r"has no completed trial.*run 'budgetnas search'",
    "no winner": r"has cleared its target yet; run 'budgetnas confirm' or pass --trial N",
    "no such budget": r"no study with budget 4,000 in .*; check --budget",
    "no trial": r"has no trial -?\d+; 'budgetnas show done' lists its trials",
    "not completed": r"did not complete \((PRUNED|FAIL)\); export a completed trial",
    "missing data": r"put the four files .* or point --data-dir / BUDGETNAS_DATA",
    "corrupt data": r"(delete it and )?fetch it again",
    "unwritable": r"cannot write .*; pass another --(out|save)",
    "folder out": r"--out .* is a folder; pass a file name",
    "exists": r"already exists; pass --force to overwrite it",
}


# --- building the states ------------------------------------------------------------


def build_storage(root: Path) -> None:
    """``root/studies.db`` with two studies and ``root/artifacts`` with one trial's weights.

    ``done``: trial 0 complete (weights stored, not confirmed), 1 pruned, 2 failed.
    ``empty``: one trial pruned over budget, nothing completed.
    """
    storage = optuna.storages.RDBStorage(f"sqlite:///{root / 'studies.db'}")
    (root / "artifacts").mkdir()
    store = FileSystemArtifactStore(root / "artifacts")
    spec = normalise(ZOO["ref7676"])
    params = analyse(spec).params
    attrs = {
        "spec": spec,
        "params": params,
        "receptive_field": analyse(spec).receptive_field,
        "recipe": dataclasses.asdict(Recipe(epochs=1)),
    }

    done = optuna.create_study(study_name="done", storage=storage, direction="maximize")
    done.set_user_attr("settings", SETTINGS)
    done.set_user_attr("trials", 3)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "trial0.pt"
        torch.save(build(spec).state_dict(), weights)
        artifact = upload_artifact(
            artifact_store=store, file_path=str(weights), study_or_trial=done
        )
    done.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=98.5,
            intermediate_values={1: 98.5},
            user_attrs={**attrs, "weights": artifact},
        )
    )
    done.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            intermediate_values={1: 60.0},
            user_attrs={**attrs, "pruned_reason": "pruner stopped it after epoch 1 at 60.00%"},
        )
    )
    done.add_trial(create_trial(state=TrialState.FAIL, user_attrs=attrs))

    empty = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    empty.set_user_attr("settings", SETTINGS)
    empty.set_user_attr("trials", 3)
    empty.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            user_attrs={"params": 12_000, "pruned_reason": "12,000 parameters > budget 8,000"},
        )
    )
    storage.engine.dispose()  # close the file before it is copied


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template")
    build_storage(root)
    return root


def write_garbage_mnist(root: Path) -> Path:
    """A data folder whose files exist but are not gzip at all."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(b"this is not a gzip file\n")
    return root


def copy_truncated_mnist(root: Path) -> Path:
    """A copy of the real MNIST whose training images were cut off halfway."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    source = Path(DATA) / "MNIST" / "raw"
    for name in MNIST_FILES:
        found = [p for p in (source / name, source / f"{name}.gz") if p.is_file()]
        shutil.copy(found[0], raw / found[0].name)
    images = next(raw.glob("train-images-idx3-ubyte*"))
    data = images.read_bytes()
    images.write_bytes(data[: len(data) // 2])
    return root


def write_foreign_sqlite(path: Path) -> None:
    """A valid SQLite database that some other program owns."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute("INSERT INTO notes VALUES ('mine')")
    connection.close()


# --- running the CLI and checking the outcome --------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``budgetnas argv`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its content: any write shows."""
    listing = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        listing[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return listing


def assert_usage_error(code: int | None, err: str, hint: str) -> None:
    """Exit code 2 and exactly one non-empty stderr line that names the fix."""
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("budgetnas"), lines[0]
    assert re.search(HINT[hint], lines[0], re.IGNORECASE), f"no hint {HINT[hint]!r} in {lines[0]!r}"


def study_counts(root: Path) -> dict[str, int]:
    """Trials per study in ``root/studies.db``, read without Optuna (which could write)."""
    uri = f"{(root / 'studies.db').as_uri()}?mode=ro"
    with sqlite3.connect(uri, uri=True) as connection:
        rows = connection.execute(
            "SELECT s.study_name, COUNT(t.trial_id) FROM studies s "
            "LEFT JOIN trials t ON t.study_id = s.study_id GROUP BY s.study_name"
        ).fetchall()
    connection.close()
    return dict(rows)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing files must fail at once, not start a torchvision download (no internet)."""
    monkeypatch.setitem(sys.modules, "torchvision", None)


# --- the cases ----------------------------------------------------------------------


@dataclass
class Case:
    """One bad invocation: ``argv`` run in a folder that ``setup`` prepared."""

    argv: list[str]
    hint: str
    with_storage: bool = True  # copy the template's studies.db and artifacts/ in first
    setup: list[str] = field(default_factory=list)  # names of extra things to create
    quiet: bool = True  # nothing on stdout either


def prepare(case: Case, root: Path, template: Path) -> None:
    if case.with_storage:
        shutil.copytree(template, root, dirs_exist_ok=True)
    for thing in case.setup:
        if thing == "text.db":
            (root / "text.db").write_text("not a database\n")
        elif thing == "empty.db":
            (root / "empty.db").touch()
        elif thing == "foreign.db":
            write_foreign_sqlite(root / "foreign.db")
        elif thing == "no-mnist":
            (root / "no-mnist").mkdir()
        elif thing == "bad-mnist":
            write_garbage_mnist(root / "bad-mnist")
        elif thing == "blocker":
            (root / "blocker").write_text("a file where a folder is expected\n")
        elif thing == "existing":
            (root / "mine.py").write_text("KEEP = 'me'\n")
        elif thing == "existing.pt":
            (root / "mine.pt").write_bytes(b"old weights")
        elif thing == "reports":
            (root / "reports").mkdir()
        else:
            raise ValueError(thing)


FRESH = {"with_storage": False}
SEARCH_ARGUMENTS = {
    "budget zero": Case(["search", "--budget", "0"], "budget", **FRESH),
    "budget negative": Case(["search", "--budget", "-8000"], "budget", **FRESH),
    "budget float": Case(["search", "--budget", "8000.5"], "budget", **FRESH),
    "budget text": Case(["search", "--budget", "lots"], "budget", **FRESH),
    "epochs zero": Case(["search", "--epochs", "0"], "epochs", **FRESH),
    "epochs negative": Case(["search", "--epochs", "-3"], "epochs", **FRESH),
    "target zero": Case(["search", "--target", "0"], "target", **FRESH),
    "target negative": Case(["search", "--target", "-5"], "target", **FRESH),
    "target over 100": Case(["search", "--target", "100.01"], "target", **FRESH),
    "target nan": Case(["search", "--target", "nan"], "target", **FRESH),
    "target text": Case(["search", "--target", "high"], "target", **FRESH),
    "pruner": Case(["search", "--pruner", "bogus"], "pruner", **FRESH),
    "device search": Case(["search", "--device", "tpu"], "device", **FRESH),
    "device train": Case(["train", "ref7676", "--device", "tpu"], "device", **FRESH),
    "device confirm": Case(["confirm", "done", "--device", "tpu"], "device"),
    "workers zero": Case(["search", "--workers", "0"], "workers", **FRESH),
    "workers negative": Case(["search", "--workers", "-2"], "workers", **FRESH),
    "train epochs zero": Case(["train", "ref7676", "--epochs", "0"], "epochs", **FRESH),
}
READERS = {  # the commands that read a study, with a study name that exists
    "show": ["show", "done"],
    "export": ["export", "done", "--trial", "0"],
    "report": ["report", "done"],
    "confirm": ["confirm", "done"],
}
STORAGE = {
    "malformed search": Case(["search", "--storage", "nonsense"], "malformed url", **FRESH),
    "malformed studies": Case(["studies", "--storage", "nonsense"], "malformed url", **FRESH),
    "sqlite two slashes": Case(["studies", "--storage", "sqlite://x.db"], "sqlite url", **FRESH),
    "postgres scheme": Case(
        ["search", "--storage", "postgres://postgres@127.0.0.1/x"], "postgres scheme", **FRESH
    ),
    "sqlite missing folder": Case(
        ["search", "--storage", "sqlite:///nowhere/studies.db"], "no folder", **FRESH
    ),
    "unreachable studies": Case(["studies", "--storage", UNREACHABLE], "unreachable", **FRESH),
    "text file search": Case(
        ["search", "--storage", "sqlite:///text.db"], "not sqlite", setup=["text.db"]
    ),
    "text file studies": Case(
        ["studies", "--storage", "sqlite:///text.db"], "not sqlite", setup=["text.db"]
    ),
    "folder storage": Case(["studies", "--storage", "sqlite:///artifacts"], "folder storage"),
    "empty file": Case(
        ["show", "done", "--storage", "sqlite:///empty.db"], "no optuna", setup=["empty.db"]
    ),
    "foreign sqlite": Case(
        ["studies", "--storage", "sqlite:///foreign.db"], "no optuna", setup=["foreign.db"]
    ),
}
for _name, _argv in READERS.items():
    STORAGE[f"malformed {_name}"] = Case(
        [*_argv, "--storage", "nonsense"], "malformed url", **FRESH
    )
    STORAGE[f"unreachable {_name}"] = Case(
        [*_argv, "--storage", UNREACHABLE], "unreachable", **FRESH
    )
    STORAGE[f"no db {_name}"] = Case(_argv, "no storage", **FRESH)
    STORAGE[f"text file {_name}"] = Case(
        [*_argv, "--storage", "sqlite:///text.db"], "not sqlite", setup=["text.db"]
    )
    STORAGE[f"no study {_name}"] = Case([_argv[0], "nope", *_argv[2:]], "no study")
STUDY_STATE = {
    "choices missing storage": Case(
        ["choices", "--storage", "sqlite:///studies.db"], "no storage", **FRESH
    ),
    "choices no such budget": Case(
        ["choices", "--storage", "sqlite:///studies.db", "--budget", "4000"], "no such budget"
    ),
    "export no completed": Case(["export", "empty"], "no completed"),
    "export no completed with trial": Case(["export", "empty", "--trial", "0"], "no completed"),
    "report no completed": Case(["report", "empty"], "no completed"),
    "confirm no completed": Case(["confirm", "empty", "--artifacts", "new"], "no completed"),
    "export no winner": Case(["export", "done"], "no winner"),
    "export no such trial": Case(["export", "done", "--trial", "99"], "no trial"),
    "export negative trial": Case(["export", "done", "--trial", "-1"], "no trial"),
    "export pruned trial": Case(["export", "done", "--trial", "1"], "not completed"),
    "export failed trial": Case(["export", "done", "--trial", "2"], "not completed"),
}
DATA_FILES = {
    "missing search": Case(
        ["search", "--data-dir", "no-mnist", "--train-subset", "500", "--val-size", "500"],
        "missing data",
        setup=["no-mnist"],
        quiet=False,
        **FRESH,  # the search's header line comes first, on stdout
    ),
    "missing train": Case(
        ["train", "ref7676", "--data-dir", "no-mnist", "--save", "net.py"],
        "missing data",
        setup=["no-mnist"],
        **FRESH,
    ),
    "missing confirm": Case(
        ["confirm", "done", "--data-dir", "no-mnist", "--artifacts", "new"],
        "missing data",
        setup=["no-mnist"],
    ),
    "corrupt search": Case(
        ["search", "--data-dir", "bad-mnist", "--train-subset", "500", "--val-size", "500"],
        "corrupt data",
        setup=["bad-mnist"],
        quiet=False,
        **FRESH,
    ),
    "corrupt train": Case(
        ["train", "ref7676", "--data-dir", "bad-mnist", "--save", "net.py"],
        "corrupt data",
        setup=["bad-mnist"],
        **FRESH,
    ),
    "corrupt confirm": Case(
        ["confirm", "done", "--data-dir", "bad-mnist", "--artifacts", "new"],
        "corrupt data",
        setup=["bad-mnist"],
    ),
}
OUTPUTS = {
    "export out under a file": Case(
        ["export", "done", "--trial", "0", "--out", "blocker/net.py"],
        "unwritable",
        setup=["blocker"],
    ),
    "report out under a file": Case(
        ["report", "done", "--out", "blocker/report.html"], "unwritable", setup=["blocker"]
    ),
    "report out is a folder": Case(
        ["report", "done", "--out", "reports"], "folder out", setup=["reports"]
    ),
    "train save under a file": Case(
        ["train", "ref7676", "--save", "blocker/net.py"], "unwritable", setup=["blocker"], **FRESH
    ),
    "train save in a missing folder": Case(
        ["train", "ref7676", "--save", "nowhere/net.py"], "unwritable", **FRESH
    ),
    "export exists": Case(
        ["export", "done", "--trial", "0", "--out", "mine.py"], "exists", setup=["existing"]
    ),
    "export weights exist": Case(
        ["export", "done", "--trial", "0", "--out", "mine.py"], "exists", setup=["existing.pt"]
    ),
    "train save exists": Case(
        ["train", "ref7676", "--save", "mine.py"], "exists", setup=["existing"], **FRESH
    ),
    "train save weights exist": Case(
        ["train", "ref7676", "--save", "mine.py"], "exists", setup=["existing.pt"], **FRESH
    ),
}
CASES = {**SEARCH_ARGUMENTS, **STORAGE, **STUDY_STATE, **DATA_FILES, **OUTPUTS}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: Case,
    template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_download: None,
) -> None:
    prepare(case, tmp_path, template)
    monkeypatch.chdir(tmp_path)
    # Should a check regress, the command fails fast on missing data instead of training.
    monkeypatch.setenv("BUDGETNAS_DATA", str(tmp_path / "no-data-here"))
    before = tree(tmp_path)
    code, out, err = run(case.argv, capsys)
    assert_usage_error(code, err, case.hint)
    if case.quiet:
        assert out == ""
    assert tree(tmp_path) == before  # no studies.db, no study, no artifacts/, no .py/.pt


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("command", [["search"], ["train", "ref7676"], ["confirm", "done"]])
def test_cuda_without_a_gpu(
    command: list[str],
    template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGETNAS_DATA", str(tmp_path / "no-data-here"))
    before = tree(tmp_path)
    code, _, err = run([*command, "--device", "cuda"], capsys)
    assert_usage_error(code, err, "no cuda")
    assert tree(tmp_path) == before


def test_bad_search_settings_leave_an_existing_storage_alone(
    template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_download: None,
) -> None:
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    (tmp_path / "no-mnist").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUDGETNAS_DATA", str(tmp_path / "no-data-here"))
    counts = study_counts(tmp_path)
    assert counts == {"done": 3, "empty": 1}
    for argv, hint in [
        (["search", "--study", "done", "--pruner", "bogus"], "pruner"),
        (["search", "--study", "fresh", "--budget", "0"], "budget"),
        (["search", "--study", "fresh", "--workers", "0"], "workers"),
        (["search", "--study", "fresh", "--device", "tpu"], "device"),
        (["search", "--study", "fresh", "--data-dir", "no-mnist"], "missing data"),
    ]:
        code, _, err = run(argv, capsys)
        assert_usage_error(code, err, hint)
    assert study_counts(tmp_path) == counts


def test_export_over_an_existing_target_works_with_force(
    template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("KEEP = 'me'\n")
    argv = ["export", "done", "--trial", "0", "--out", "mine.py"]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "exists")
    assert (tmp_path / "mine.py").read_text() == "KEEP = 'me'\n"
    assert not (tmp_path / "mine.pt").exists()

    code, out, err = run([*argv, "--force"], capsys)
    assert code == 0, err
    assert "wrote mine.py and mine.pt" in out
    source = (tmp_path / "mine.py").read_text()
    assert f"PARAMS = {analyse(ZOO['ref7676']).params}" in source
    assert (tmp_path / "mine.pt").stat().st_size > 0
    assert not list(tmp_path.glob(".mine*"))  # no staging files left


def test_export_after_a_confirmation_that_missed_the_target_says_what_to_do(
    template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    study = optuna.load_study(study_name="done", storage=f"sqlite:///{tmp_path}/studies.db")
    missed = {
        "trial": 0, "params": 7676, "val_accuracy": 98.5, "epochs": 1, "seeds": [0, 1],
        "test_accuracy": [98.6, 98.8], "seconds": 2.0, "weights": "x", "weights_seed": 0,
        "target": 99.4,
    }  # fmt: skip
    study.set_user_attr("confirmations", {"0": missed})
    code, _, err = run(["export", "done"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "none of the 1 confirmed trial(s)" in err and "mean test 98.70%" in err
    assert "budgetnas confirm" not in err  # confirmation already ran: it would change nothing
    assert "run more trials" in err and "--epochs" in err and "--trial N" in err


@needs_data
def test_a_search_where_no_candidate_fits_says_so_and_what_to_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["search", "--budget", "500", "--trials", "2", "--data-dir", DATA]
    code, out, err = run([*argv, "--train-subset", "500", "--val-size", "500"], capsys)
    assert code == 1, err
    assert "no candidate fits: of 2 trials, 2 were over the budget of 500 parameters" in out
    assert "raise --budget, --max-macs or --max-activations" in out
    assert "Traceback" not in err


@needs_data
def test_search_against_an_unreachable_server_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The URL is well formed, so the search gets as far as loading the data first.
    monkeypatch.chdir(tmp_path)
    argv = ["search", "--storage", UNREACHABLE, "--data-dir", DATA]
    code, _, err = run([*argv, "--train-subset", "500", "--val-size", "500"], capsys)
    assert_usage_error(code, err, "unreachable")
    assert tree(tmp_path) == {}  # no studies.db, no artifacts/


@needs_data
def test_truncated_mnist_copy_fails_train_before_anything_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copy_truncated_mnist(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    code, _, err = run(["train", "ref7676", "--data-dir", "data", "--save", "net.py"], capsys)
    assert_usage_error(code, err, "corrupt data")
    assert tree(tmp_path) == before


@needs_data
def test_train_save_over_an_existing_target_works_with_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("KEEP = 'me'\n")
    argv = ["train", "ref7676", "--epochs", "1", "--train-subset", "200", "--data-dir", DATA]
    code, _, err = run([*argv, "--save", "mine.py"], capsys)
    assert_usage_error(code, err, "exists")
    assert (tmp_path / "mine.py").read_text() == "KEEP = 'me'\n"

    code, out, err = run([*argv, "--save", "mine.py", "--force"], capsys)
    assert code == 0, err
    assert "wrote mine.py and mine.pt" in out
    assert "PARAMS = " in (tmp_path / "mine.py").read_text()


# --- end to end, in a real process ---------------------------------------------------

SUBPROCESS_CASES = {
    "argparse": Case(["search", "--budget", "0"], "budget", **FRESH),
    "malformed url": Case(["search", "--storage", "nonsense"], "malformed url", **FRESH),
    "unreachable": Case(["show", "done", "--storage", UNREACHABLE], "unreachable", **FRESH),
    "no study": Case(["report", "nope"], "no study"),
    "export exists": Case(
        ["export", "done", "--trial", "0", "--out", "mine.py"], "exists", setup=["existing"]
    ),
    "corrupt data": Case(
        ["train", "ref7676", "--data-dir", "bad-mnist", "--save", "net.py"],
        "corrupt data",
        setup=["bad-mnist"],
        **FRESH,
    ),
}


def cli_command() -> list[str]:
    """The installed console script, or the module where it is not on PATH."""
    script = shutil.which("budgetnas")
    return [script] if script else [sys.executable, "-m", "search.cli"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES.values(), ids=SUBPROCESS_CASES.keys())
def test_bad_input_end_to_end_in_a_real_process(case: Case, template: Path, tmp_path: Path) -> None:
    prepare(case, tmp_path, template)
    before = tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "BUDGETNAS_DATA"}
    completed = subprocess.run(
        [*cli_command(), *case.argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_usage_error(completed.returncode, completed.stderr, case.hint)
    assert completed.stdout == ""
    assert tree(tmp_path) == before
