"""A real Flower deployment on 127.0.0.1 for the slow tests: SuperLink, SuperNodes, TLS, SuperNode auth.

Every process this helper starts (and each one's children: the SuperExec and the
app processes the SuperLink and SuperNodes spawn) is stopped by its PID in
:meth:`LocalDeployment.stop_all` (use it as a context manager). Each deployment has
its own ``FLWR_HOME`` in its working directory; nothing listens beyond loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """PIDs of the children of ``pid``, their children, ... (from /proc)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def send_signal(pid: int, sig: int) -> None:
    """``kill(pid, sig)``, quiet when the process is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


class LocalDeployment:
    """SuperLink + SuperNodes as separate processes, with the certificates and keys of ``make_certificates.sh``."""

    def __init__(self, workdir: Path, nodes: int, *, extra_keys: int = 1):
        self.work = Path(workdir)
        self.nodes = nodes
        self.home = self.work / "flwr-home"
        self.logs = self.work / "logs"
        for folder in (self.home, self.logs, self.work / "data"):
            folder.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    # the SuperNode's SuperExec asks for new tasks every 1 s by default
                    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
        self.processes: dict[str, subprocess.Popen] = {}
        self.started_pids: list[int] = []  # every process started, children included, for stop_all
        self.port = free_port()
        self.certs = self.work / "certs"
        subprocess.run([str(REPO / "scripts" / "make_certificates.sh"), str(self.certs), str(nodes + extra_keys), HOST],
                       check=True, capture_output=True, env=self.env)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "{HOST}:{self.port}"\n'
            f'root-certificates = "{self.certs / "ca.crt"}"\n')

    # ------------------------------------------------------------------ processes
    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        log.close()
        self.processes[name] = process
        self.started_pids.append(process.pid)
        (self.logs / f"{name}.pid").write_text(str(process.pid))
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_for_log(self, name: str, text: str, seconds: float, *, after: int = 0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if text in self.log(name)[after:]:
                return
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited ({self.processes[name].returncode}):\n{self.log(name)[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"no {text!r} in the log of {name} within {seconds} s:\n{self.log(name)[-3000:]}")

    def start_superlink(self) -> None:
        offset = len(self.log("superlink"))
        self._start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile", str(self.certs / "server.pem"),
            "--ssl-keyfile", str(self.certs / "server.key"), "--enable-supernode-auth", "--host", HOST, "--port", str(self.port),
            "--database", str(self.work / "superlink.db")])
        self.wait_for_log("superlink", f"Uvicorn running on https://{HOST}:{self.port}", 90, after=offset)

    def register(self, i: int) -> None:
        self.flwr("supernode", "register", str(self.certs / "keys" / f"supernode-{i}.pub"), "deploy")

    def write_data(self, users: int, *, examples: int = 15, dim: int = 10, rank: int = 2, sparsity: int = 1) -> None:
        from fedlrs.data.synthetic import make_lrs_data

        data = make_lrs_data(users=users, examples=examples, dim=dim, rank=rank, sparsity=sparsity, seed=0).train
        for i in range(users):
            np.savez(self.work / "data" / f"user-{i + 1}.npz", X=data.X[i].numpy(), y=data.y[i].numpy())

    def start_supernode(self, i: int) -> None:
        self._start(f"supernode-{i}", [
            "flower-supernode", "--root-certificates", str(self.certs / "ca.crt"), "--superlink", f"{HOST}:{self.port}",
            "--port", str(free_port()), "--auth-supernode-private-key", str(self.certs / "keys" / f"supernode-{i}"),
            "--node-config", f"data-path='{self.work / 'data' / f'user-{i}.npz'}' state-dir='{self.work / 'state' / f'node-{i}'}'"])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to ``name`` and to each of its descendants, by PID; wait for ``name`` to exit."""
        process = self.processes[name]
        family = descendants(process.pid)
        self.started_pids += family
        for pid in [process.pid, *family]:
            send_signal(pid, sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=15)

    def stop_all(self) -> None:
        """Stop every process started here (and their children) by PID: SIGTERM, then SIGKILL after 10 s."""
        for process in self.processes.values():
            self.started_pids += descendants(process.pid)
        pids = list(dict.fromkeys(self.started_pids))
        for pid in pids:
            if alive(pid):
                send_signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            for process in self.processes.values():
                process.poll()
            time.sleep(0.2)
        for pid in pids:
            if alive(pid):
                send_signal(pid, signal.SIGKILL)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # ------------------------------------------------------------------ the flwr CLI
    def flwr(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(["flwr", *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def submit(self, run_config: str) -> int:
        """``flwr run . deploy --run-config ...`` (returns at once); the run's id."""
        out = json.loads(self.flwr("run", ".", "deploy", "--run-config", run_config, "--format", "json"))
        return int(out["run-id"])

    def runs(self) -> dict[int, dict]:
        listed = json.loads(self.flwr("list", "deploy", "--format", "json"))
        return {int(run["run-id"]): run for run in listed["runs"]}

    def wait_run(self, run_id: int, seconds: float) -> str:
        """The run's status from ``flwr list --format json`` once it is ``finished:*``."""
        deadline = time.monotonic() + seconds
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.runs().get(run_id, {}).get("status", "unknown")
            if status.startswith("finished"):
                return status
            time.sleep(1.0)
        raise TimeoutError(f"run {run_id} still {status!r} after {seconds} s")
