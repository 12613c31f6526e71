"""``budgetnas front`` on the committed studies: the real searches and their real
confirmations, read from copies (the committed files are never opened here), and never
changed by reading them.

The expected rows are computed from the studies' stored confirmations, and the front
is checked against its definition (no front row is dominated, every other row is),
besides the facts the README states. Nothing trains: each case reads SQLite files.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import statistics
from pathlib import Path

import optuna
import pytest

from search import api
from search.cli import main
from search.errors import UsageError
from search.results.front import (
    FrontRow,
    front_figure,
    mark_front,
    open_read_only,
    read_front,
    read_reference,
    smallest_clearing,
)

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    "search_3000.db",
    "search_4000.db",
    "search_8000.db",
    "search_8000_60min.db",
    "search_20000.db",
]
# The README's front reads these too: the answered questions of docs/results.md.
README_ONLY = [
    "search_8000_scratch_answer.db",
    "search_6000_12e.db",
    "search_8000_995.db",
    "search_20000_9965.db",
]
REFERENCE = ROOT / "models" / "mnist_8000p_15e.py"
MARKERS = re.compile(r"<!-- front: (?P<command>.*?) -->\n(?P<table>.*?)\n<!-- /front -->", re.S)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder holding copies of the committed studies under ``results/``, as the
    README's command names them relative to the repository root."""
    root = tmp_path_factory.mktemp("front")
    (root / "results").mkdir()
    for name in FILES + README_ONLY:
        shutil.copyfile(ROOT / "results" / name, root / "results" / name)
    return root


@pytest.fixture(scope="module")
def hashes(folder) -> dict[str, str]:
    """The copies' contents before any test of this module read them."""
    return {name: digest(folder / "results" / name) for name in FILES}


@pytest.fixture(scope="module")
def urls(folder, hashes) -> list[str]:
    return [f"sqlite:///{folder / 'results' / name}" for name in FILES]


@pytest.fixture(scope="module")
def front(urls):
    return read_front(urls)


def stored_confirmations(url: str) -> list[tuple[str, int, int, dict]]:
    """(study, epoch cap, trial, record) for every stored confirmation, read straight
    from the study's user attributes: the test's own path to the figures."""
    storage = open_read_only(url)
    found = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        cap = study.user_attrs["settings"]["epochs"]
        for trial, record in study.user_attrs.get("confirmations", {}).items():
            found.append((name, cap, int(trial), record))
    storage.engine.dispose()
    return found


def dominated(row: FrontRow, rows: list[FrontRow]) -> bool:
    """The definition, written out: another row of the same epoch cap with fewer-or-equal
    parameters and a higher-or-equal mean, one of the two strictly."""
    return any(
        other.epochs == row.epochs
        and other.params <= row.params
        and other.mean >= row.mean
        and (other.params < row.params or other.mean > row.mean)
        for other in rows
    )


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_row_per_confirmed_trial_with_its_stored_figures(front, urls):
    expected = {}
    for url in urls:
        for study, cap, trial, record in stored_confirmations(url):
            expected[(url, study, trial)] = (cap, record)
    assert len(expected) == 11  # 2 + 3 at 3k, 1 at 4k, 1 + 2 at 8k, 2 at 20k
    rows = {(row.storage, row.study, row.trial): row for row in front.rows}
    assert rows.keys() == expected.keys()
    for key, (cap, record) in expected.items():
        row = rows[key]
        assert row.epochs == cap and not row.reference
        assert row.params == record["params"] and row.macs == record["macs"]
        assert list(row.test_accuracy) == record["test_accuracy"]
        assert list(row.seeds) == record["seeds"] == [0, 1, 2]
        assert row.mean == pytest.approx(statistics.fmean(record["test_accuracy"]))
        assert row.min == min(record["test_accuracy"])
    assert front.epoch_caps == [15, 20]


def test_the_front_is_the_undominated_rows_per_epoch_cap(front, urls):
    rows = list(front.rows)
    for row in rows:
        assert row.on_front == (not dominated(row, rows)), row
    on_front = {(Path(r.storage).name, r.trial) for r in rows if r.on_front}
    # What the README says: the 8k front holds trial 17 of the hour-long search.
    (t17,) = [r for r in rows if r.storage == urls[3] and r.trial == 17]
    assert (t17.study, t17.params, round(t17.mean, 2), t17.on_front) == (
        "mnist-8000p-15e",
        4_659,
        99.49,
        True,
    )
    # The 3k best (2,956 params, 99.34%) is on the front: the only smaller net is worse.
    (t83,) = [r for r in rows if r.storage == urls[0] and r.trial == 83]
    assert (t83.params, round(t83.mean, 2)) == (2_956, 99.34)
    assert t83.on_front == (not dominated(t83, rows)) is True
    # Bigger 8k nets that trial 17 beats on both counts are off it.
    assert ("search_8000_60min.db", 20) not in on_front
    assert ("search_8000.db", 37) not in on_front
    # A 20-epoch net is never measured against a 15-epoch one.
    assert ("search_20000.db", 1) in on_front and ("search_20000.db", 32) in on_front


def row(params: int, mean: float, epochs: int = 15, name: str = "s") -> FrontRow:
    return FrontRow(name, "x", 0, epochs, params, None, (mean,), (0,), mean, mean)


def test_ties_and_epoch_caps_follow_the_definition():
    rows = mark_front(
        [
            row(1000, 99.0),
            row(1000, 99.0, name="the same net, another study"),
            row(1000, 98.0),  # as small, worse: dominated
            row(2000, 99.0),  # larger, no better: dominated
            row(3000, 99.5),
            row(500, 90.0, epochs=20),  # another cap: dominates nothing at 15
        ]
    )
    assert [r.on_front for r in rows] == [True, True, False, False, True, True]
    answer = smallest_clearing(rows, 99.0, epoch_caps=[15, 20, 30])
    assert answer[15] is rows[0] and answer[20] is None and answer[30] is None
    assert smallest_clearing(rows, 99.2)[15] is rows[4]


def test_target_answers_the_smallest_net_per_epoch_cap(folder, urls, capsys):
    front = read_front(urls)
    for cap, answer in front.smallest(99.4).items():
        clearing = [r for r in front.rows if r.epochs == cap and r.mean >= 99.4]
        assert answer.params == min(r.params for r in clearing) and answer.on_front
    code, out, err = run(["front", "--storage", *urls, "--target", "99.4"], capsys)
    assert code == 0 and err == ""
    lines = out.split("the smallest net with mean test accuracy >= 99.4%:\n")[1].splitlines()
    assert lines[0].startswith("  15 epochs: 3,580 params, trial 36 of mnist-4000p-15e in ")
    assert lines[1].startswith("  20 epochs: 16,631 params, trial 1 of mnist-20000p-20e in ")
    code, out, _ = run(["front", "--storage", *urls, "--target", "99.61"], capsys)
    assert code == 0
    assert "  15 epochs: none of the 9 confirmed nets (best mean 99.49%, 4,659 params)" in out
    assert "  20 epochs: 19,519 params, trial 32 of mnist-20000p-20e" in out


def test_text_output_has_a_section_per_epoch_cap_with_the_front_marked(urls, capsys):
    code, out, _ = run(["front", "--storage", *urls], capsys)
    assert code == 0 and "smallest net" not in out
    fifteen, twenty = out.split("\n\n")
    assert fifteen.startswith("15 epochs: 9 confirmed nets from 5 studies, 6 on the front (*)")
    assert twenty.startswith("20 epochs: 2 confirmed nets from 1 study, 2 on the front (*)")
    marked = [line.split()[1] for line in fifteen.splitlines()[2:] if line.split()[0] == "*"]
    assert marked == ["2,788", "2,791", "2,956", "2,968", "3,580", "4,659"]


def test_epochs_keeps_one_epoch_cap(urls, capsys):
    front = read_front(urls, epochs=20)
    assert {r.study for r in front.rows} == {"mnist-20000p-20e"}
    assert front.trials and {t.epochs for t in front.trials} == {20}
    code, out, _ = run(["front", "--storage", *urls, "--epochs", "15", "--markdown"], capsys)
    assert code == 0 and "mnist-20000p-20e" not in out
    assert {line.split(" | ")[0] for line in out.splitlines()[2:] if line} == {"| 15"}
    code, out, err = run(["front", "--storage", *urls, "--epochs", "30"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "no confirmed architecture trained to 30 epochs" in err


def test_a_reference_is_marked_and_never_on_the_front(urls, tmp_path, capsys):
    reference = read_reference(REFERENCE)
    assert reference.reference and not reference.on_front
    assert (reference.study, reference.epochs, reference.params) == ("mnist_8000p_15e", 15, 4_659)
    # A made-up reference smaller and better than every searched net leaves the front
    # as the searches made it.
    better = tmp_path / "better.py"
    better.write_text(
        "import torch  # never run: METRICS is read, not imported\n"
        "METRICS = {'test_accuracy': [99.9, 99.9, 99.9], 'test_accuracy_mean': 99.9,\n"
        "           'test_accuracy_min': 99.9, 'epochs': 15, 'params': 100}\n"
    )
    plain = read_front(urls)
    with_references = read_front(urls, [REFERENCE, better])
    assert with_references.rows == plain.rows
    assert [r.study for r in with_references.references] == ["better", "mnist_8000p_15e"]
    assert not any(r.on_front for r in with_references.references)
    assert with_references.smallest(99.4) == plain.smallest(99.4)
    code, out, _ = run(["front", "--storage", *urls, "--references", str(REFERENCE)], capsys)
    assert code == 0
    (line,) = [line for line in out.splitlines() if "mnist_8000p_15e" in line]
    assert line.split()[:2] == ["reference", "4,659"] and str(REFERENCE) in line
    code, out, _ = run(
        ["front", "--storage", *urls, "--references", str(REFERENCE), "--markdown"], capsys
    )
    assert "| 15 | reference | 4,659 |" in out


def test_html_draws_the_front_the_trials_and_the_references(urls, tmp_path, capsys):
    out_path = tmp_path / "figures" / "front.html"
    argv = ["front", "--storage", *urls, "--references", str(REFERENCE), "--html", str(out_path)]
    code, out, _ = run([*argv, "--target", "99.4"], capsys)
    assert code == 0 and out.endswith(f"wrote {out_path}\n")
    page = out_path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js inlined: opens offline
    assert page.count("Plotly.newPlot") == 1
    for name in (
        "every completed trial: validation accuracy",
        "confirmed, 15 epochs",
        "front, 20 epochs",
        "reference (hand-made)",
        "target 99.4%",
    ):
        assert name in page, name
    assert list(out_path.parent.iterdir()) == [out_path]  # no temporary file left
    # Every completed trial of the studies is a grey point, with its study in the hover.
    figure = front_figure(read_front(urls, [REFERENCE]))
    traces = {trace.name: trace for trace in figure.data}
    grey = traces["every completed trial: validation accuracy"]
    complete = 0
    for url in urls:
        storage = open_read_only(url)
        for name in optuna.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            complete += len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
        storage.engine.dispose()
    assert len(grey.x) == complete > 0  # the studies grow when a search is resumed
    assert {c[0] for c in grey.customdata} == {
        f"mnist-{b}"
        for b in ("3000p-15e", "3000p-15e-transfer", "4000p-15e", "8000p-15e", "20000p-20e")
    }
    assert figure.layout.xaxis.type == "log"
    assert list(traces["reference (hand-made): test mean (bar: down to the min)"].x) == [4_659]
    on_front = traces["front, 15 epochs"]
    assert list(on_front.x) == [2_788, 2_791, 2_956, 2_968, 3_580, 4_659]


def test_reading_changes_no_storage(folder, urls, hashes, tmp_path, capsys):
    for argv in (
        [],
        ["--markdown", "--target", "99.4"],
        ["--epochs", "15", "--html", str(tmp_path / "f.html")],
    ):
        assert run(["front", "--storage", *urls, *argv], capsys)[0] == 0
    api.front(urls, target=99.4)
    assert {name: digest(folder / "results" / name) for name in FILES} == hashes
    assert sorted(p.name for p in (folder / "results").iterdir()) == sorted(
        FILES + README_ONLY
    )  # no journal
    # Read-only for real: a write through the connection fails rather than lands.
    storage = open_read_only(urls[2])
    study = optuna.load_study(study_name="mnist-8000p-15e", storage=storage)
    with pytest.raises(optuna.exceptions.StorageInternalError) as error:
        study.set_user_attr("touched", True)
    assert "attempt to write a readonly database" in str(error.value.__cause__)
    storage.engine.dispose()
    assert digest(folder / "results" / FILES[2]) == hashes[FILES[2]]


def bad_inputs(tmp_path: Path, urls: list[str]) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "a_file").write_text("")
    (tmp_path / "no_metrics.py").write_text("PARAMS = 3\n")
    (tmp_path / "computed.py").write_text("METRICS = dict(params=3)\n")
    (tmp_path / "short.py").write_text("METRICS = {'params': 3, 'epochs': 15}\n")
    (tmp_path / "broken.py").write_text("METRICS = {\n")
    empty = tmp_path / "unconfirmed.db"
    study = optuna.create_study(study_name="fresh", storage=f"sqlite:///{empty}")
    study.add_trial(optuna.trial.create_trial(value=99.0, params={}, distributions={}))
    del study
    html = str(tmp_path / "f.html")
    return {
        "no storage file": (
            ["--storage", f"sqlite:///{tmp_path / 'missing.db'}"],
            "no storage at",
        ),
        "malformed URL": (["--storage", "studies.db"], "is not a database URL"),
        "no confirmed trial": (
            ["--storage", urls[0], f"sqlite:///{empty}", "--html", html],
            r"holds no confirmed trial \(studies: fresh\)",
        ),
        "reference without METRICS": (
            ["--storage", urls[0], "--references", str(tmp_path / "no_metrics.py")],
            "has no METRICS dict",
        ),
        "reference METRICS computed": (
            ["--storage", urls[0], "--references", str(tmp_path / "computed.py")],
            "METRICS is not a literal dict",
        ),
        "reference METRICS short": (
            ["--storage", urls[0], "--references", str(tmp_path / "short.py")],
            "METRICS lacks test_accuracy, test_accuracy_mean, test_accuracy_min",
        ),
        "reference not Python": (
            ["--storage", urls[0], "--references", str(tmp_path / "broken.py")],
            "is not a readable Python module",
        ),
        "no reference file": (
            ["--storage", urls[0], "--references", str(tmp_path / "nope.py")],
            "no such file",
        ),
        "html under a file": (
            ["--storage", urls[0], "--html", str(tmp_path / "a_file" / "f.html")],
            "cannot write .*; pass another --html",
        ),
        "html deeper under a file": (
            ["--storage", urls[0], "--html", str(tmp_path / "a_file" / "x" / "f.html")],
            "a_file is not a writable folder; pass another --html",
        ),
        "html a folder": (["--storage", urls[0], "--html", str(tmp_path)], "is a folder"),
    }


CASES = [
    "no storage file",
    "malformed URL",
    "no confirmed trial",
    "reference without METRICS",
    "reference METRICS computed",
    "reference METRICS short",
    "reference not Python",
    "no reference file",
    "html under a file",
    "html deeper under a file",
    "html a folder",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, urls, tmp_path, capsys):
    cases = bad_inputs(tmp_path, urls)
    assert sorted(cases) == sorted(CASES)
    argv, message = cases[case]
    before = {p: digest(p) if p.is_file() else None for p in tmp_path.rglob("*")}
    code, out, err = run(["front", *argv], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("budgetnas front: error: ")
    assert re.search(message, err), err
    assert {p: digest(p) if p.is_file() else None for p in tmp_path.rglob("*")} == before


def test_the_readme_table_is_what_the_command_prints_now(folder, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = MARKERS.search(readme)
    assert match, "README lost its <!-- front: COMMAND --> ... <!-- /front --> markers"
    command = match["command"]
    # The command shown above the table is the one in the marker.
    shown = readme[: match.start()].rsplit("```bash\n", 1)[1].split("\n```", 1)[0]
    assert " ".join(shown.replace("\\\n", " ").split()) == command
    argv = shlex.split(command)
    assert argv[:2] == ["budgetnas", "front"] and "--markdown" in argv
    monkeypatch.chdir(folder)  # its relative sqlite:///results/... URLs read the copies
    code, out, _ = run(argv[1:], capsys)
    assert code == 0
    assert out.rstrip("\n") == match["table"], "README's front table is stale: rerun the command"


def test_the_notebook_gets_a_dataframe(urls):
    frame = api.front(urls, references=[REFERENCE], target=99.4)
    assert list(frame.columns) == [
        "study",
        "storage",
        "trial",
        "epochs",
        "params",
        "macs",
        "test_accuracy",
        "seeds",
        "mean",
        "min",
        "reference",
        "on_front",
        "smallest",
    ]
    assert len(frame) == 12 and frame.reference.sum() == 1
    assert not frame[frame.reference].on_front.any()
    assert sorted(frame[frame.smallest].params) == [3_580, 16_631]
    assert list(api.front(urls[4]).trial) == [1, 32]
    with pytest.raises(UsageError, match="no storage at"):
        api.front("sqlite:///no/such.db")
