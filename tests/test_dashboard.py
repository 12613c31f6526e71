"""The dashboard, started for real in a subprocess on a real SQLite study, and queried
through optuna-dashboard's own JSON API."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import upload_artifact
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from search.errors import UsageError
from search.results.dashboard import dashboard_url, serve
from search.study.storage import artifact_store

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 30


def make_study(tmp_path: Path) -> tuple[str, str, bytes]:
    """A study with one trained trial whose weights are in the artifact store, and one
    trial pruned over budget. Returns the storage URL, the artifact id and its bytes."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="mnist-8000p-3e", storage=url, direction="maximize")
    study.set_user_attr("settings", {"budget": 8000, "epochs": 3, "target": 99.4})
    # Weights are uploaded while the trial runs, as the search does.
    trial = study.ask({"width1": IntDistribution(4, 25)})
    weights = tmp_path / "trial0.pt"
    weights.write_bytes(b"not really a state dict")
    artifact = upload_artifact(
        artifact_store=artifact_store(tmp_path / "artifacts"),
        file_path=str(weights),
        study_or_trial=trial,
    )
    trial.set_user_attr("params", 7400)
    trial.set_user_attr("weights", artifact)
    trial.report(99.3, 1)
    study.tell(trial, 99.3)
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"width1": 25},
            distributions={"width1": IntDistribution(4, 25)},
            user_attrs={"params": 12000, "pruned_reason": "12,000 parameters > budget 8,000"},
        )
    )
    return url, artifact, weights.read_bytes()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def wait_until_up(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"dashboard exited with {process.returncode}"
        try:
            get(url)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    pytest.fail(f"dashboard did not answer at {url} within {STARTUP_TIMEOUT_S} s")


def test_dashboard_serves_the_study_its_trials_and_their_weights(tmp_path):
    url, artifact, weights = make_study(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    code = (
        "from search.results.dashboard import serve; "
        f"serve({url!r}, {str(tmp_path / 'artifacts')!r}, port={port})"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(process, f"{base}/api/meta")
        assert json.loads(get(f"{base}/api/meta"))["artifact_is_available"]

        studies = json.loads(get(f"{base}/api/studies"))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["mnist-8000p-3e"]
        study_id = studies[0]["study_id"]

        detail = json.loads(get(f"{base}/api/studies/{study_id}"))
        trials = detail["trials"]
        assert [(t["number"], t["state"]) for t in trials] == [(0, "Complete"), (1, "Pruned")]
        assert [a["artifact_id"] for a in trials[0]["artifacts"]] == [artifact]
        download = f"{base}/artifacts/{study_id}/{trials[0]['trial_id']}/{artifact}"
        assert get(download) == weights
        assert b"<html" in get(f"{base}/dashboard").lower()
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    # It died of our SIGTERM, not of something earlier, and nothing answers any more.
    assert process.returncode == -signal.SIGTERM
    assert f"http://127.0.0.1:{port}/dashboard" in output
    with pytest.raises(urllib.error.URLError):
        get(f"{base}/api/meta")


def test_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(UsageError, match="no storage at"):
        serve(f"sqlite:///{missing}", str(tmp_path / "artifacts"), port=free_port())
    assert list(tmp_path.iterdir()) == []


def test_port_in_use_is_an_error(tmp_path):
    url, _, _ = make_study(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot serve on 127.0.0.1:{port}"):
            serve(url, str(tmp_path / "artifacts"), port=port)


def test_dashboard_url_brackets_ipv6_hosts():
    assert dashboard_url("127.0.0.1", 8080) == "http://127.0.0.1:8080/dashboard"
    assert dashboard_url("::1", 8080) == "http://[::1]:8080/dashboard"
