"""Server processes on localhost, found again through a JSON state file.

`ManagedServer` is the process management every local server shares: the server runs in its own
session so it outlives whoever started it (a Dagster run, a notebook); a state file in `state_dir`
records pid, port and url so a later process reuses or replaces it; starts are serialised by a file
lock; stop signals the whole process group. `cv_pipeline.deployment.endpoints.EndpointServer`
runs the serving endpoints on it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import requests
from PIL import Image

from cv_pipeline.models.pyfunc import IMAGE_COLUMN, encode_image

STATE_FILE_NAME = "server.json"
LOG_FILE_NAME = "server.log"
_PING_TIMEOUT_S = 2.0
_STOP_GRACE_S = 15.0
_LOG_TAIL_CHARS = 4000


def post_images(
    invocations_url: str, images: Sequence[Image.Image | bytes | str], timeout_s: float = 60.0, **fields: Any
) -> dict:
    """POST images (PIL images, image file bytes or base64 text) as one `dataframe_split` request
    (plus any top-level `fields`, e.g. `client_request_id`) to `invocations_url`; the answer's JSON.

    Raises RuntimeError with the status and body when the server does not answer 200 with a
    `predictions` list.
    """
    rows = [[_image_cell(image)] for image in images]
    payload = {"dataframe_split": {"columns": [IMAGE_COLUMN], "data": rows}, **fields}
    response = requests.post(invocations_url, json=payload, timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"POST {invocations_url} answered {response.status_code}: {response.text[:2000]}")
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
        raise RuntimeError(f"POST {invocations_url} answered without 'predictions': {str(body)[:2000]}")
    return body


def _image_cell(image: Image.Image | bytes | str) -> str:
    if isinstance(image, Image.Image):
        return encode_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(image)).decode("ascii")
    return image


def _ping(url: str) -> bool:
    try:
        return requests.get(f"{url}/ping", timeout=_PING_TIMEOUT_S).status_code == 200
    except requests.RequestException:
        return False


def _client_host(host: str) -> str:
    """The address to reach a server bound to `host` from this machine, as it goes in a URL."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _group_command_lines(pgid: int) -> list[str] | None:
    """Command lines of the live (non-zombie) processes in process group `pgid`; None where
    `/proc` is not available."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    command_lines = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            command_lines.append(command_line.decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
    return command_lines


def _group_alive(pgid: int) -> bool:
    """Whether any live process is left in the process group `pgid` (zombies do not count)."""
    command_lines = _group_command_lines(pgid)
    if command_lines is not None:
        return bool(command_lines)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_server_group(pgid: int, marker: str) -> bool:
    """Whether group `pgid` still runs a server whose command line contains `marker`, not a process
    that reused its id after a reboot (assumed so where `/proc` cannot tell)."""
    command_lines = _group_command_lines(pgid)
    return command_lines is None or any(marker in line for line in command_lines)


class ManagedServer:
    """One server process per `state_dir` and `state_file_name`, in its own session.

    Subclasses name their files, say which word marks their command line (`command_marker`, so
    stop() never signals a process that merely reused the pid) and call `_launch` under `_locked`.
    """

    state_file_name = STATE_FILE_NAME
    log_file_name = LOG_FILE_NAME
    lock_file_name = "server.lock"
    command_marker = "python"  # a subclass names a word of its command line
    description = "the server"

    def __init__(self, state_dir: Path, host: str = "127.0.0.1"):
        self.state_dir = Path(state_dir)
        self.host = host
        self.state_path = self.state_dir / self.state_file_name
        self.log_path = self.state_dir / self.log_file_name
        self._process: subprocess.Popen | None = None  # set when this object started the server

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a torn or foreign file: treated as no server; stop() removes it

    def _write_state(self, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(self.state_path)

    def _reap(self) -> None:
        if self._process is not None:
            self._process.poll()

    def _healthy(self, state: dict[str, Any]) -> bool:
        self._reap()
        return _process_alive(int(state["pid"])) and _ping(state["url"])

    def _running_state(self) -> dict[str, Any] | None:
        """The state file of a server that is alive and answers /ping, else None."""
        state = self._read_state()
        return state if state and self._healthy(state) else None

    @contextlib.contextmanager
    def _locked(self):
        """Serialise starts across processes (two runs promoting at once), so the second finds the
        first one's server instead of killing it while it starts."""
        import fcntl

        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / self.lock_file_name, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _launch(
        self, command: list[str], env: dict[str, str], port: int, state: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """Start `command` (listening on `port`) in its own session, record `state` plus pid, port,
        url, start time and log path, and wait until it answers /ping; returns the state written.

        Raises RuntimeError with the tail of the server log when it exits or is not answering
        /ping within `timeout_s`.
        """
        url = f"http://{_client_host(self.host)}:{port}"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )
        state = {
            "pid": self._process.pid,
            "port": port,
            "url": url,
            **state,
            "started_at": datetime.now(timezone.utc).isoformat(),
            "log_path": str(self.log_path),
        }
        self._write_state(state)

        deadline = time.monotonic() + timeout_s
        while True:
            exit_code = self._process.poll()
            if exit_code is not None:
                self.stop()
                raise RuntimeError(
                    f"{self.description} exited with code {exit_code}; log {self.log_path}:\n{self._log_tail()}"
                )
            if _ping(url):
                return state
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.description} did not answer {url}/ping within {timeout_s:.0f}s; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.5)

    def stop(self) -> bool:
        """Stop the server's whole process group (SIGTERM, then SIGKILL after a grace period) and
        remove the state file. True when a live server was stopped."""
        state = self._read_state()
        stopped = False
        if state and "pid" in state:
            pgid = int(state["pid"])  # the server leads its own session, so its pid is the group id
            self._reap()
            if _group_alive(pgid) and _is_server_group(pgid, self.command_marker):
                stopped = True
                self._signal_group(pgid, signal.SIGTERM)
                if not self._wait_for_group_exit(pgid, _STOP_GRACE_S):
                    self._signal_group(pgid, signal.SIGKILL)
                    self._wait_for_group_exit(pgid, 5.0)
        self.state_path.unlink(missing_ok=True)
        self._process = None
        return stopped

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass

    def _wait_for_group_exit(self, pgid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._reap()
            if not _group_alive(pgid):
                return True
            time.sleep(0.1)
        return False

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-_LOG_TAIL_CHARS:]
