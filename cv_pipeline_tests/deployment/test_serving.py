"""The endpoint server as a process: started by one process and outliving it, found again and
reused through its state file, shared by concurrent callers, replaced when its settings change,
stopped with its whole process group."""

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from cv_pipeline.deployment.endpoints import EndpointServer, ServeOptions
from cv_pipeline.deployment.serving import _process_alive
from cv_pipeline.settings import REPO_ROOT

pytestmark = pytest.mark.slow  # three server starts


def _start_in_child_process(state_dir, tracking_uri) -> dict:
    """`ensure` from a separate, short-lived Python process (as a Dagster run would)."""
    script = textwrap.dedent("""
        import dataclasses, json, sys
        from pathlib import Path
        from cv_pipeline.deployment.endpoints import EndpointServer
        info = EndpointServer(Path(sys.argv[1])).ensure(sys.argv[2], timeout_s=240)
        print(json.dumps(dataclasses.asdict(info)))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(state_dir), tracking_uri], capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_server_outlives_its_starter_is_reused_shared_replaced_and_stopped(tmp_path):
    state_dir, uri = tmp_path / "serving", f"sqlite:///{tmp_path / 'mlflow.db'}"
    server = EndpointServer(state_dir)
    try:
        started = _start_in_child_process(state_dir, uri)
        assert started["reused"] is False and _process_alive(started["pid"])  # outlived the process that started it
        assert requests.get(f"{started['url']}/health", timeout=5).status_code == 200
        assert requests.get(f"{started['url']}/serving-endpoints", timeout=5).json() == {"endpoints": []}
        state = json.loads(server.state_path.read_text())
        assert {"pid", "port", "url", "tracking_uri"} <= set(state)

        with ThreadPoolExecutor(2) as pool:  # two runs promoting at once share the running server
            both = list(pool.map(lambda s: s.ensure(uri), (server, EndpointServer(state_dir))))
        assert {info.pid for info in both} == {started["pid"]} and all(info.reused for info in both)
        assert server.status().pid == started["pid"]

        replaced = server.ensure(uri, options=ServeOptions(flush_interval_s=1.0))  # other settings: a new server
        assert replaced.reused is False and replaced.pid != started["pid"] and not _process_alive(started["pid"])

        assert server.stop() is True
        assert not _process_alive(replaced.pid) and not server.state_path.exists()
        assert server.status() is None and server.stop() is False
    finally:
        server.stop()


def test_a_server_that_cannot_start_fails_with_its_log_tail(tmp_path):
    import socket

    server = EndpointServer(tmp_path / "serving")
    with socket.socket() as taken:  # the port is someone else's
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="exited with code") as error:
            server.ensure("sqlite:///" + str(tmp_path / "mlflow.db"), port=taken.getsockname()[1], timeout_s=120)
    assert "address already in use" in str(error.value).lower()  # from the tail of the server log
    assert not server.state_path.exists()


def test_settings_that_would_spin_or_never_flush_are_refused():
    for bad in ({"flush_interval_s": 0.0}, {"flush_interval_s": -1.0}, {"flush_rows": 0}, {"batch_rows": -1}):
        with pytest.raises(ValueError, match="ServeOptions"):
            ServeOptions(**bad)
