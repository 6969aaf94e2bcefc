"""Running many independent points (a sweep's configurations, a rate search's probes) one
after another, or as tasks on a Ray cluster (`ray=` an address, or "auto").

"auto" joins the cluster `ray.init(address="auto")` finds (RAY_ADDRESS, or one started
with `ray start` on this machine) or else starts a local one bound to 127.0.0.1 for this run;
an address joins that cluster. A run that started its cluster shuts it down. Results come
back in the order of the points, whatever order the tasks finish in, so a fanned-out run
prints what the serial run prints. Errors of the TilesimError family raised in a task are
raised here as they are; a worker or node that dies (after Ray's retries) is `HostLost`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from tilesim.errors import ConfigError, HostLost, TilesimError, first_line


def run_all(
    fn: Callable[[Any], Any],
    points: Sequence[Any],
    *,
    ray: str | None = None,
    desc: str = "points",
    quiet: bool = False,
    label: Callable[[Any], str] | None = None,
) -> list[Any]:
    """[fn(p) for p in points], serially or as Ray tasks, with a progress bar."""
    quiet = quiet or not sys.stderr.isatty()
    if ray is None:
        out = []
        with tqdm(points, desc=desc, disable=quiet, leave=False) as bar:
            for p in bar:
                if label:
                    bar.set_postfix_str(label(p))
                out.append(fn(p))
        return out
    module, started = connect(ray)
    try:
        task = module.remote(_call)
        shared = module.put(fn)  # one copy of the function (and what it holds) in the object store
        refs = [task.remote(shared, p) for p in points]
        pending = list(refs)
        with tqdm(total=len(refs), desc=f"{desc} (ray)", disable=quiet, leave=False) as bar:
            while pending:
                done, pending = module.wait(pending, num_returns=1)
                bar.update(len(done))
        return [_result(module, r, label(p) if label else repr(p)) for r, p in zip(refs, points, strict=True)]
    finally:
        if started:
            module.shutdown()


def _call(fn: Callable[[Any], Any], point: Any) -> Any:
    return fn(point)


def connect(address: str):
    """The ray module, connected; and whether this call started the cluster."""
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray runs need the ray package: pip install 'tilesim[ray]'") from None
    if ray.is_initialized():
        return ray, False
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address != "auto":
        _answers(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as exc:
            raise ConfigError(
                f"cluster={address!r}: cannot join that Ray cluster ({first_line(exc)}){_auth()}"
            ) from None
        return ray, True
    try:
        ray.init(address="auto", **quiet)
    except ray.exceptions.RayError as exc:  # one runs here, but it refuses us (its token)
        raise ConfigError(
            f"cluster='auto': cannot join the Ray cluster found here ({first_line(exc)}){_auth()}"
        ) from None
    except (ConnectionError, ValueError, RuntimeError):
        # A cluster of our own on loopback, with the token authentication Ray gives a new
        # cluster by default, which it announces on every start: not news to the user here.
        # (Setting RAY_AUTH_MODE=token instead reaches the GCS but not this process's cached
        # config after the attempt above: the start then fails to authenticate.)
        announcer = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = announcer.level
        announcer.setLevel(logging.ERROR)
        try:
            start_local(ray, usable_cores(), **quiet)
        except (ConnectionError, ValueError, RuntimeError, OSError, ray.exceptions.RayError) as exc:
            raise ConfigError(
                f"cluster='auto': no Ray cluster runs here and one could not be started ({first_line(exc)})"
            ) from None
        finally:
            announcer.setLevel(level)
    return ray, True


# Ray reads this when each of its processes starts: "0" keeps every address of a cluster on
# loopback (its one-machine mode, meant for Windows and macOS, works on Linux as well)
_ONE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the host says): a local cluster
    and `tilesim fidelity` start as many workers, not one per core of a host they may not use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def start_local(module, num_cpus: int, **options: Any) -> None:
    """Start a Ray cluster on this machine that listens and advertises on 127.0.0.1 only.

    Ray (2.60) turns `_node_ip_address="127.0.0.1"` into the machine's outward address and
    binds its servers there; in its one-machine mode it keeps loopback. That mode is on for
    the start (the processes it starts read it then) and off again after it, so that a later
    cluster of the same process may span machines."""
    try:
        from ray._private import ray_constants
    except ImportError:  # another Ray layout: its own default address
        ray_constants = None
    saved_env, saved = os.environ.get(_ONE_MACHINE), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_ONE_MACHINE] = "0"
    if saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        module.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **options)
    finally:
        if saved_env is None:
            os.environ.pop(_ONE_MACHINE, None)
        else:
            os.environ[_ONE_MACHINE] = saved_env
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


def _auth() -> str:
    if os.environ.get("RAY_AUTH_MODE"):
        return ""
    return "; if `ray start` said token authentication is enabled, set RAY_AUTH_MODE=token here too"


def check_address(address: str) -> tuple[str, int]:
    """`auto` or HOST:PORT (a command checks it before its model loads); the host and port."""
    if address == "auto":
        return "", 0
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"cluster={address!r}: give a cluster's HOST:PORT (its head's GCS address), or 'auto'")
    return host, int(port)


def _answers(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a cluster address where nothing listens: ray.init would wait on it for many
    minutes, retrying and logging, before it gave up."""
    host, port = check_address(address)
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__).lower()
        raise ConfigError(
            f"cluster={address!r}: nothing answers there ({reason}); start a cluster with `ray start --head` and "
            "give its address, or cluster='auto'"
        ) from None


def cpus(module) -> int:
    return max(1, int(module.cluster_resources().get("CPU", 1)))


# what Ray raises when the process or node that ran a task is gone
_LOST = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError")


def lost_errors(module, *more: str) -> tuple[type[BaseException], ...]:
    """The exception classes of this Ray version that mean a worker, actor or node is gone."""
    return tuple(getattr(module.exceptions, name) for name in (*_LOST, *more) if hasattr(module.exceptions, name))


def raise_cause(exc: BaseException) -> None:
    """Raise a failed Ray task's TilesimError as it was raised in the task, else `exc`."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TilesimError):
        raise cause from None
    raise exc


def _result(module, ref, point: str):
    try:
        return module.get(ref)
    except lost_errors(module) as exc:
        raise HostLost(
            f"the Ray worker running point {point} died or its node left the cluster ({type(exc).__name__}, "
            "after Ray's retries); rerun: the points are deterministic"
        ) from None
    except module.exceptions.RayTaskError as exc:
        raise_cause(exc)
