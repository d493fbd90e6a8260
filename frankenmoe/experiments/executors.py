"""Where a sweep's stage runs happen: in this process one after another, or as
Ray tasks on a cluster (the optional extra `frankenmoe[ray]`).

Both run the same function (frankenmoe/experiments/variants.py `run_task`), so a sweep
gives the same measurements either way. On Ray:
- `local` starts a cluster of this machine's CPUs on 127.0.0.1 and stops it after;
  `auto` or an address (`host:port`, `ray://host:10001`) joins a running one;
- a stage that computes with torch asks for one GPU where the cluster has GPUs
  (its device settings then decide whether it uses it), otherwise one CPU;
- a task whose worker dies (killed, out of memory, node lost) is retried by Ray
  (`max_retries`): the retry takes the key's lock the dead worker held and
  replaces its half-written folder, so nothing it left is ever served;
- every worker must see the build folder at the same path (FRANKENMOE_BUILD_DIR on
  shared storage); the FRANKENMOE_* settings travel with the tasks, and no token does.

Joining is bounded: the address must accept a connection within `--ray-timeout`
seconds (CONNECT_TIMEOUT_S) before Ray is asked, and Ray must then join it from a
child process within the same time, else one line names the address. A loopback address
stays on loopback (Ray would otherwise put the machine's own interface address in
its place), and `ray://` needs the Ray Client (`ray[client]`), said before connecting.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
import subprocess
import sys
from typing import Callable

from frankenmoe.errors import EnvironmentProblem, UsageError
from frankenmoe.experiments.variants import Task, TaskDone, run_task

RETRIES = 3  # worker deaths per task before the variant is reported failed
CONNECT_TIMEOUT_S = 30.0  # --ray-timeout's default: seconds for a cluster to answer
CLIENT_PORT = 10001  # Ray Client's default port, for ray://HOST


def endpoint(address: str) -> tuple[str, int] | None:
    """The (host, port) that must answer for a cluster address; None for `auto`,
    which Ray looks up itself."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, colon, port = rest.rpartition(":")
    if not colon and address.startswith("ray://"):
        host, port = rest, str(CLIENT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray {address}: give local, auto, HOST:PORT or ray://HOST[:PORT]")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_answer(address: str, where: tuple[str, int], timeout: float) -> None:
    """A connection to the cluster's port within `timeout` seconds, or one line saying so."""
    try:
        with socket.create_connection(where, timeout=timeout):
            pass
    except OSError as e:
        why = f"nothing answered within {timeout:g} s" if isinstance(e, TimeoutError) else e.strerror or str(e)
        raise EnvironmentProblem(
            f"--ray {address}: {why}; start the cluster there (`ray start --head --port {where[1]}`, with "
            "--node-ip-address for a loopback address), check the address, or raise --ray-timeout"
        ) from None


JOIN = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); ray.shutdown()"


def require_cluster(address: str, timeout: float) -> None:
    """Ray itself joins the cluster once, in a child process killed after `timeout`
    seconds: a port that answers need not be a Ray head's, and Ray then retries
    without end, printing as it goes. Its output is kept out of sight; the last
    line of an error is said."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", JOIN, address], capture_output=True, text=True, timeout=timeout, env=os.environ
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(
            f"--ray {address}: the address answers, but no Ray cluster joined within {timeout:g} s; check that it is "
            "a Ray head's address (`ray status` there), or raise --ray-timeout"
        ) from None
    if proc.returncode != 0:
        last = ([line for line in proc.stderr.splitlines() if line.strip()] or ["no output"])[-1]
        raise EnvironmentProblem(f"--ray {address}: Ray could not join the cluster ({last.strip()})")


def node_name() -> str:
    return socket.gethostname()


class InProcess:
    """Each task runs as it is submitted, in this process; `wait` hands them back in order."""

    def __init__(self) -> None:
        self._done: list[tuple[object, TaskDone]] = []

    def submit(self, task: Task) -> object:
        handle = object()
        self._done.append((handle, run_task(task, node_name())))
        return handle

    def wait(self) -> list[tuple[object, TaskDone]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        pass


def _remote_task(task: Task) -> TaskDone:
    import ray

    return run_task(task, f"{node_name()} ({ray.get_runtime_context().get_node_id()[:8]})")


def settings_env() -> dict[str, str]:
    """The FRANKENMOE_* settings of this process, for workers started elsewhere
    (none of them holds a token: the Hub token is read from HF_TOKEN, never sent)."""
    return {k: v for k, v in os.environ.items() if k.startswith("FRANKENMOE_") or k == "GPTQMODEL_CPU_WORKERS"}


class OnRay:
    """Tasks on a Ray cluster: `local` (started here, on 127.0.0.1), `auto`, or an
    address; at most `max_parallel` at once when given (the rest wait here)."""

    def __init__(
        self,
        address: str,
        max_parallel: int | None = None,
        log: Callable[[str], None] = print,
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if importlib.util.find_spec("ray") is None:
            raise EnvironmentProblem(
                "--ray: Ray is not installed; install the extra (pip install 'frankenmoe[ray]') or drop --ray"
            )
        if not address:
            raise UsageError("--ray: give local, auto or a cluster address (host:port)")
        where = None if address == "local" else endpoint(address)
        if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
            raise EnvironmentProblem(
                f"--ray {address}: a ray:// address needs the Ray Client; install it "
                "(pip install 'ray[client]==2.60.0') or give the cluster's HOST:PORT from one of its nodes"
            )
        if where is not None:
            require_answer(address, where, timeout)
            if is_loopback(where[0]):  # read by Ray when imported: keep its own address on loopback too
                os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if address != "local":
            require_cluster(address, timeout)
        import ray

        self._ray = ray
        self._started = address == "local"
        if self._started:
            # The cluster stays on this machine's loopback address and is stopped when the sweep ends.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1"
            )
        else:
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": settings_env()})
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        log(f"ray       cluster {address}: {int(resources.get('CPU', 0))} CPUs, {self.gpus} GPUs")
        self._remote = ray.remote(max_retries=RETRIES)(_remote_task)
        self._max = max_parallel
        self._running: dict[object, object] = {}  # ray ref -> handle
        self._waiting: list[tuple[object, Task]] = []

    def _start(self, handle: object, task: Task) -> None:
        gpu = self.gpus > 0 and "torch" in task.stage.packages
        ref = self._remote.options(num_cpus=1, num_gpus=1 if gpu else 0).remote(task)
        self._running[ref] = handle

    def submit(self, task: Task) -> object:
        handle = object()
        if self._max is not None and len(self._running) >= self._max:
            self._waiting.append((handle, task))
        else:
            self._start(handle, task)
        return handle

    def wait(self) -> list[tuple[object, TaskDone]]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        out = []
        for ref in ready:
            handle = self._running.pop(ref)
            try:
                out.append((handle, self._ray.get(ref)))
            except self._ray.exceptions.RayError as e:  # retries spent: the worker kept dying
                line = f"ray: the task failed after {RETRIES} retries ({type(e).__name__}); see the Ray logs"
                out.append((handle, TaskDone(None, True, 0.0, "ray", [line], 1, str(e))))
        while self._waiting and (self._max is None or len(self._running) < self._max):
            self._start(*self._waiting.pop(0))
        return out

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def executor(
    ray_address: str | None,
    max_parallel: int | None = None,
    log: Callable[[str], None] = print,
    timeout: float = CONNECT_TIMEOUT_S,
) -> InProcess | OnRay:
    """The executor `--ray` asks for: none is this process, one task at a time."""
    if max_parallel is not None and ray_address is None:
        raise UsageError("--max-parallel: only with --ray; without it a sweep runs one stage at a time")
    return InProcess() if ray_address is None else OnRay(ray_address, max_parallel, log, timeout)
