"""`--launcher ray`: realises a placement plan with Ray placement groups.

One placement group per pool (OpenRLHF's layout: `num_nodes x num_gpus_per_node` bundles of
one GPU; colocated services share their pool and each takes a fraction of every bundle; a
tensor-parallel rollout engine takes one bundle of TP GPUs). Each rank is hosted by one Ray
actor, `ServiceHost`, which runs the very same `quartet serve <role>` command the local
launcher runs, as its child process, with the rank's environment. Addresses come from Ray
(the node's IP and the port the service bound there); the coordinator only ever sees them.

On a cluster without GPUs a "GPU" bundle is one logical CPU: each slot is one CPU process
(gloo), so the same placement runs on a laptop. `RayLauncher()` with no address starts a
local Ray instance for the run (loopback, free ports, no dashboard, token auth disabled)
and ends it by its pid; it never calls `ray stop`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from quartet.clients.health import wait_for_serving
from quartet.launch.launcher import ServiceCommand, device_env
from quartet.launch.placement import (
    PlacementError,
    PlacementPlan,
    PoolPlacement,
)
from quartet.launch.ranks import rank_env, rank_name
from quartet.ports import free_port

log = logging.getLogger("quartet.launch")

# A local instance must not pick up (or require) a token from ~/.ray.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
WORKER_PORTS = 200
"""Ports reserved for a local instance's worker processes (one per Ray actor)."""
LOCAL_NUM_CPUS = 64
"""Logical CPUs of a local instance: one per CPU slot, not real cores (the slots share the
host's cores as the local launcher's processes do)."""


@contextlib.contextmanager
def python_signal_handlers_kept():
    """`ray.init` puts Ray's own SIGTERM handler (it logs "SIGTERM received" and aborts the
    process: exit -6) in place of the driver's. A `quartet ppo` run relies on its Python
    handlers to finish the iteration and save on SIGTERM/SIGINT, so they are put back
    after it (measured on Ray 2.60: without this, SIGTERM to a `--launcher ray` run aborted
    it mid-iteration with no checkpoint). Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)

    try:
        yield
    except SystemExit as exc:
        # While it connects, Ray's handler turns SIGTERM into SystemExit(15): hand the
        # signal to the driver's own handler instead (which stops a starting run cleanly).
        if exc.code != signal.SIGTERM or not callable(kept[signal.SIGTERM]):
            raise
        restore()
        signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        restore()


class LocalRay:
    """A Ray head on this host for one run: `ray start --head --block` in its own session,
    on free loopback ports, ended by its pid (SIGTERM, then SIGKILL to its group)."""

    def __init__(self, log_path: Path, num_cpus: int = LOCAL_NUM_CPUS) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="qray-")  # short: Ray's sockets live here
        low = free_port()
        high = min(low + WORKER_PORTS, 65535)
        flags = ("--port", "--node-manager-port", "--object-manager-port",
                 "--ray-client-server-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port")
        ports: dict[str, int] = {}
        while len(ports) < len(flags):  # distinct, and outside the workers' range
            port = free_port()
            if not low <= port <= high and port not in ports.values():
                ports[flags[len(ports)]] = port
        self.port = ports["--port"]
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false",
               f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dir}",
               "--object-store-memory=100000000", "--disable-usage-stats",
               f"--min-worker-port={low}", f"--max-worker-port={high}",
               *(f"{k}={v}" for k, v in ports.items())]
        log.info("starting a local Ray instance: %s", " ".join(cmd))
        self.log_path = log_path
        with open(log_path, "w") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            env={**os.environ, **RAY_ENV},
                                            start_new_session=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the head's GCS accepts connections (ray.init on a dead address would wait
        for minutes); raises with the log's tail if `ray start` exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"local Ray exited with code {code} while starting; "
                                   f"{self.log_path}:\n{tail}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"local Ray not up after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("local Ray did not stop in %.0fs; killing its group", timeout_s)
        # Whatever `ray start` spawned in its session (raylet, gcs, workers) goes with it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class ServiceHost:
    """Ray actor (one per rank): runs `quartet serve <role>` as a child process."""

    def __init__(self, bind_host: str | None = None) -> None:
        """`bind_host`: where the service listens; None: the node's address (a private local
        instance passes loopback, which Ray itself would not use)."""
        self.bind_host = bind_host
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.port_file: Path | None = None

    def node_address(self) -> str:
        """The address Ray knows this node by (what the node was started with, e.g.
        127.0.0.1 for a local instance), not a guess from the routing table."""
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        for node in ray.nodes():
            if node["NodeID"] == node_id:
                return node["NodeManagerAddress"]
        return ray.util.get_node_ip_address()

    def host(self) -> str:
        return self.bind_host or self.node_address()

    def where(self) -> tuple[str, str, list[str]]:
        """(this node's address, the address services here bind, GPU ids Ray gave this
        actor)."""
        import ray

        return self.node_address(), self.host(), [str(g) for g in ray.get_gpu_ids()]

    def free_port(self) -> int:
        return free_port(self.host())

    def start(self, role: str, args: list[str], env: dict[str, str], log_path: str,
              port: int = 0) -> int:
        """Every rank gets the same argv (ranks > 0 ignore --port/--port-file); `port` is 0
        (a free one) except when a restart keeps the old address."""
        from quartet.launch.local import DIST_ENV

        host = self.host()
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port_file = self.log_path.with_suffix(".port")
        self.port_file.unlink(missing_ok=True)
        base = {k: v for k, v in os.environ.items()
                if k not in DIST_ENV and not k.startswith("TORCHELASTIC_")}
        cmd = [sys.executable, "-m", "quartet.cli.main", "serve", role, "--host", host,
               "--port", str(port), "--port-file", str(self.port_file)]
        with open(self.log_path, "a" if port else "w") as out:
            self.process = subprocess.Popen(
                cmd + list(args), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                env={**base, "QUARTET_ADVERTISE_HOST": host, **env})
        return self.process.pid

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def port(self) -> int:
        """The bound port once written; 0 while starting. Raises when the process died."""
        assert self.process is not None and self.port_file is not None
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"exited with code {code} while starting; log tail of "
                               f"{self.log_path}:\n{self.log_tail()}")
        try:
            text = self.port_file.read_text().strip()
        except OSError:
            return 0
        return int(text) if text else 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return "(no log)"

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()


class _RemoteProcess:
    """What `wait_for_serving` polls: a rank's process, through its host actor."""

    def __init__(self, host) -> None:
        self.host = host
        self.returncode: int | None = None

    def poll(self) -> int | None:
        import ray

        self.returncode = ray.get(self.host.poll.remote())
        return self.returncode


class RayLauncher:
    name = "ray"

    def __init__(self, log_dir: str | Path, address: str | None = None,
                 env: dict[str, str] | None = None,
                 service_args: list[str] | None = None) -> None:
        """`service_args` go to every service, as with LocalCluster."""
        self.service_args = list(service_args or ())
        self.log_dir = Path(log_dir).resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.env = dict(env or {})
        self.local: LocalRay | None = None
        self.hosts: dict[tuple[str, int, int], object] = {}
        """(service, rank, device slot) -> its ServiceHost actor; slot 0 runs the process."""
        self.groups: list = []
        self.started: dict[str, tuple[str, int, tuple]] = {}
        """rank process name -> (service, rank, ServiceHost.start arguments)."""
        self.placement: PlacementPlan | None = None
        self.bind_host: str | None = None
        """Where services listen: loopback on a private local instance, else each node's
        address as Ray knows it."""
        self._connected = False

    # ------------------------------------------------------------------ cluster
    def _connect(self) -> None:
        if self._connected:
            return
        import ray

        extra = {}
        if self.address is None:
            os.environ.update(RAY_ENV)  # only for the private instance: a cluster's own
            self.local = LocalRay(self.log_dir / "ray.log")  # auth settings stay untouched
            self.local.wait_ready()
            address = self.local.address
            extra["_node_ip_address"] = "127.0.0.1"
            self.bind_host = "127.0.0.1"
        else:
            address = self.address
        deadline = time.monotonic() + 120
        while True:
            try:
                with python_signal_handlers_kept():
                    ray.init(address=address, log_to_driver=False,
                             logging_level=logging.WARNING, configure_logging=False, **extra)
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises several kinds while starting
                if self.local is not None and self.local.process.poll() is not None:
                    raise RuntimeError(f"local Ray exited with code "
                                       f"{self.local.process.returncode}; see "
                                       f"{self.local.log_path}") from exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"--ray.address {address}: could not connect: "
                                       f"{exc}") from exc
                time.sleep(1.0)
        self._connected = True
        log.info("connected to Ray at %s: %s", address, ray.cluster_resources())

    def resources(self) -> tuple[str, int | None]:
        """("cuda", fewest GPUs on a GPU node) on a cluster with GPUs, else ("cpu", None)."""
        import ray

        self._connect()
        gpus = [n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")]
        gpus = [int(g) for g in gpus if g]
        if gpus:
            return "cuda", min(gpus)
        return "cpu", None

    # ------------------------------------------------------------------ placing
    @staticmethod
    def _bundles(pool: PoolPlacement, device_kind: str) -> list[dict[str, float]]:
        """One bundle per device slot: a GPU (plus a CPU to run on), or one logical CPU."""
        if device_kind == "cuda":
            return [{"GPU": 1.0, "CPU": 1.0} for _ in pool.bundles]
        return [{"CPU": 1.0} for _ in pool.bundles]

    def _holders(self, plan: PlacementPlan, pgs: dict, host_cls) -> None:
        """One host actor per device slot of every rank, in that slot's bundle, holding the
        service's share of it; the first slot's actor runs the rank's process, the others
        only hold (and report) their device: that is how a TP engine or a reference shown
        several GPUs takes several bundles."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pools = {p.name: p for p in plan.pools}
        gpu = plan.device_kind == "cuda"
        for svc in plan.services:
            if svc.pool == "external":
                continue
            for rank in svc.ranks:
                if not rank.devices:
                    self.hosts[(svc.name, rank.rank, 0)] = host_cls.options(
                        num_cpus=0, max_concurrency=4).remote(self.bind_host)
                    continue
                pool = pools[svc.pool]
                for k, device in enumerate(rank.devices):
                    share = svc.gpu_fraction
                    opts = dict(num_gpus=share, num_cpus=0) if gpu else dict(num_cpus=share)
                    strategy = PlacementGroupSchedulingStrategy(
                        pgs[svc.pool], pool.bundles.index((rank.node, device)))
                    self.hosts[(svc.name, rank.rank, k)] = host_cls.options(
                        max_concurrency=4, scheduling_strategy=strategy, **opts
                    ).remote(self.bind_host)

    def _landed(self, plan: PlacementPlan) -> PlacementPlan:
        """The plan on the nodes (IPs) and, on GPUs, the device ids Ray gave each slot."""
        import ray

        keys = list(self.hosts)
        where = dict(zip(keys, ray.get([self.hosts[k].where.remote() for k in keys]),
                         strict=True))
        gpu = plan.device_kind == "cuda"
        out = replace(plan, launcher=self.name, nodes={})
        nodes: dict[str, str] = {}
        for svc in plan.services:
            if svc.pool == "external":
                continue
            ranks = []
            for r in svc.ranks:
                slots = [where[(svc.name, r.rank, k)] for k in range(max(len(r.devices), 1))]
                ips = {ip for ip, _, _ in slots}
                if len(ips) > 1:
                    raise PlacementError(f"{svc.name} rank {r.rank}: Ray placed its devices on "
                                         f"several nodes ({', '.join(sorted(ips))})")
                ip, host, _ = slots[0]
                nodes[ip] = host
                devices = (tuple(int(g) for _, _, ids in slots for g in ids)
                           if gpu and r.devices else r.devices)
                ranks.append(replace(r, node=ip, devices=devices, address=host))
            for i, r in enumerate(ranks):  # LOCAL_RANK: first device among the node's
                before = sum(len(x.devices) for x in ranks[:i] if x.node == r.node)
                ranks[i] = replace(r, local_rank=before)
            out = out.with_service(replace(svc, ranks=tuple(ranks)))
        return replace(out, nodes=nodes)

    def launch(self, plan: PlacementPlan, commands: dict[str, ServiceCommand],
               timeout_s: float) -> PlacementPlan:
        import ray
        from ray.util.placement_group import placement_group

        self._connect()
        # 1. one placement group per pool with devices (STRICT_PACK when on one node)
        pgs = {}
        for pool in plan.pools:
            if pool.bundles:
                pg = placement_group(self._bundles(pool, plan.device_kind),
                                     strategy="STRICT_PACK" if pool.num_nodes == 1 else "PACK",
                                     name=f"quartet-{pool.name}")
                self.groups.append(pg)
                pgs[pool.name] = pg
        for name, pg in pgs.items():
            try:
                ray.get(pg.ready(), timeout=timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"--launcher ray: placement group {name!r} not placed after "
                                   f"{timeout_s:.0f}s; cluster: {ray.cluster_resources()}"
                                   ) from None
        # 2.-3. host actors in their bundles, and where they landed
        self._holders(plan, pgs, ray.remote(ServiceHost))
        realised = self._landed(plan)
        # 4. start every rank's process with its environment
        for svc in realised.services:
            if svc.pool == "external":
                continue
            cmd = commands[svc.name]
            master, port = svc.ranks[0].address, 0
            if svc.world_size > 1:
                port = ray.get(self.hosts[(svc.name, 0, 0)].free_port.remote())
            starts = []
            for r in svc.ranks:
                env = {**self.env, **cmd.env}
                if svc.world_size > 1:
                    env.update(rank_env(r.rank, svc.world_size, master, port, r.local_rank))
                env.update(device_env(svc, r, realised.device_kind))
                log_name = rank_name(svc.name, r.rank)
                args = ["--replica-id", log_name, *self.service_args, *cmd.args]
                spec = (cmd.role, args, env, str(self.log_dir / f"{log_name}.log"))
                self.started[log_name] = (svc.name, r.rank, spec)
                starts.append(self.hosts[(svc.name, r.rank, 0)].start.remote(*spec))
            pids = ray.get(starts)
            ranks = tuple(replace(r, pid=pid) for r, pid in zip(svc.ranks, pids, strict=True))
            realised = realised.with_service(replace(svc, ranks=ranks))
        # 5. rank 0's port, then SERVING
        deadline = time.monotonic() + timeout_s
        for svc in realised.services:
            if svc.pool == "external":
                continue
            host = self.hosts[(svc.name, 0, 0)]
            port = 0
            while not port:
                try:
                    port = ray.get(host.port.remote())
                except ray.exceptions.RayTaskError as exc:
                    raise RuntimeError(f"{svc.name}: {exc.cause}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{svc.name} did not bind a port in {timeout_s:.0f}s")
                if not port:
                    time.sleep(0.2)
            address = f"{svc.ranks[0].address}:{port}"
            try:
                wait_for_serving(address, max(deadline - time.monotonic(), 1.0),
                                 _RemoteProcess(host), what=svc.name)
            except (RuntimeError, TimeoutError) as exc:
                tail = ray.get(host.log_tail.remote())
                raise type(exc)(f"{exc}; log tail:\n{tail}") from None
            ranks = (replace(svc.ranks[0], address=address), *svc.ranks[1:])
            realised = realised.with_service(replace(svc, ranks=ranks))
        self.placement = realised
        return realised

    # ------------------------------------------------------------------ supervision
    @property
    def supervisor(self) -> RayLauncher:
        """What restarts a dead role process (RoleRecovery): this launcher itself."""
        return self

    # The same methods as LocalCluster's (names are rank processes: `<service>` for rank 0,
    # `<service>.rank<k>`), so a supervisor restarts roles without knowing the launcher.
    def names(self) -> list[str]:
        return list(self.started)

    def role_of(self, name: str) -> str:
        return self.started[name][2][0]

    def address_of(self, name: str) -> str:
        service, _, _ = self.started[name]
        return self.placement.service(service).address if self.placement else ""

    def exited(self) -> list[str]:
        import ray

        refs = {n: self.hosts[(s, r, 0)].poll.remote() for n, (s, r, _) in self.started.items()}
        return [n for n, ref in refs.items() if ray.get(ref) is not None]

    def restart(self, name: str, timeout_s: float = 300.0) -> str:
        """Starts rank process `name` again in the same Ray actor (same node and devices) and,
        for rank 0, on the same port; waits until SERVING; returns the service's address."""
        import ray

        service, rank, spec = self.started[name]
        host = self.hosts[(service, rank, 0)]
        ray.get(host.stop.remote(5.0))
        address = self.address_of(name)
        port = int(address.rsplit(":", 1)[1]) if rank == 0 and address else 0
        ray.get(host.start.remote(*spec, port))
        if rank == 0:
            wait_for_serving(address, timeout_s, _RemoteProcess(host), what=name)
        return address

    def retire(self, name: str) -> None:
        import ray

        service, rank, _ = self.started.pop(name)
        ray.get(self.hosts[(service, rank, 0)].stop.remote(5.0))

    def stop(self) -> dict[str, int | None]:
        """Stops every service process, then the host actors and placement groups, then the
        local Ray instance (if this launcher started one)."""
        codes: dict[str, int | None] = {}
        if self._connected:
            import ray
            from ray.util.placement_group import remove_placement_group

            refs = {rank_name(n, r): h.stop.remote()
                    for (n, r, k), h in self.hosts.items() if k == 0}
            for name, ref in refs.items():
                try:
                    codes[name] = ray.get(ref, timeout=60)
                except Exception as exc:  # noqa: BLE001 - teardown reports, never raises
                    log.warning("%s: could not stop cleanly: %s", name, exc)
                    codes[name] = None
            for h in self.hosts.values():
                ray.kill(h)
            for pg in self.groups:
                remove_placement_group(pg)
            self.hosts.clear()
            self.started.clear()
            self.groups.clear()
            ray.shutdown()
            self._connected = False
        if self.local is not None:
            self.local.stop()
            self.local = None
        return codes
