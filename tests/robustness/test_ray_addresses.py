"""`sweep --ray ADDRESS`: a missing Ray Client, an address where nothing listens or
where something that is not Ray answers, each one line with its exit code in bounded
time; a cluster on 127.0.0.1 is joined on 127.0.0.1. Every address here is on
loopback, and Ray's own node address is pinned to it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import yaml

from tests.conftest import EXAMPLE, REPO, run_cli

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": str(EXAMPLE), "axes": {"gate_mode": ["hidden"]}, "until": "resolve"}))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(sweep_file, *args, env=None, timeout=120):
    t0 = time.monotonic()
    proc = run_cli("sweep", str(sweep_file), *args, build=sweep_file.parent / "build", env=env, timeout=timeout)
    return proc, time.monotonic() - t0


def test_nothing_listening_is_one_line_at_once(sweep_file):
    port = free_port()
    proc, seconds = sweep(sweep_file, "--ray", f"127.0.0.1:{port}")
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: --ray 127.0.0.1:{port}: Connection refused; start the cluster there (`ray start --head --port "
        f"{port}`, with --node-ip-address for a loopback address), check the address, or raise --ray-timeout"
    ]
    assert seconds < 30


def test_a_port_that_is_not_ray_gives_up_after_the_timeout(sweep_file):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.extend(listener.accept() for _ in range(8)), daemon=True).start()
    port = listener.getsockname()[1]
    try:
        proc, seconds = sweep(sweep_file, "--ray", f"127.0.0.1:{port}", "--ray-timeout", "4")
    finally:
        listener.close()
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: --ray 127.0.0.1:{port}: the address answers, but no Ray cluster joined within 4 s; check that it is "
        "a Ray head's address (`ray status` there), or raise --ray-timeout"
    ]
    assert 4 <= seconds < 30
    assert accepted  # it was asked on loopback


def test_ray_client_address_without_the_client_says_how_to_install_it(sweep_file):
    """Without grpc (what `ray[client]` adds), as on a plain `pip install ray`."""
    port = free_port()
    hide = "import sys; sys.modules['grpc'] = None; from frankenmoe.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", hide, "sweep", str(sweep_file), "--ray", f"ray://127.0.0.1:{port}"],
        cwd=REPO,
        env={**os.environ, "FRANKENMOE_BUILD_DIR": str(sweep_file.parent / "build")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: --ray ray://127.0.0.1:{port}: a ray:// address needs the Ray Client; install it "
        "(pip install 'ray[client]==2.60.0') or give the cluster's HOST:PORT from one of its nodes"
    ]


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:", ":6379", "127.0.0.1:99999", "ray://"])
def test_a_malformed_address_is_a_usage_error(sweep_file, address):
    proc, _ = sweep(sweep_file, "--ray", address, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: --ray {address}: give local, auto, HOST:PORT or ray://HOST[:PORT]"]


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_the_timeout_is_checked_when_parsed(sweep_file, value):
    proc, _ = sweep(sweep_file, "--ray", "127.0.0.1:1", "--ray-timeout", value, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "argument --ray-timeout:" in proc.stderr


@pytest.mark.slow
def test_a_cluster_started_on_loopback_is_joined_there(fixture_models, sweep_file):
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    ray = [str(REPO / ".venv" / "bin" / "ray")] if (REPO / ".venv" / "bin" / "ray").exists() else ["ray"]
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    start = [*ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1"]
    start += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        proc, _ = sweep(sweep_file, "--ray", f"127.0.0.1:{port}", env={"RAY_AUTH_MODE": "disabled"}, timeout=300)
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert f"ray       cluster 127.0.0.1:{port}: 1 CPUs" in proc.stdout
    assert "v01-hidden: resolve ran on" in proc.stdout
