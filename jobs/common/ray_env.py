"""Ray wiring both jobs share: connecting to (or starting) Ray, progress output, cluster resources and
the model actor stage of their pipelines."""

from __future__ import annotations

import logging
import os

from jobs.common.config import JobConfig

log = logging.getLogger("jobs.common.ray_env")


def init_ray(config: JobConfig) -> None:
    """Connects to the cluster (``--address`` or ``$RAY_ADDRESS``, as ``ray job submit`` sets) or starts
    a local runtime with ``--num-cpus`` / ``--object-store-mb``. Does nothing when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"log_to_driver": True}
    if address in (None, "local"):
        if config.num_cpus is not None:
            kwargs["num_cpus"] = config.num_cpus
        if config.object_store_mb is not None:
            kwargs["object_store_memory"] = int(config.object_store_mb) * 1024 * 1024
        kwargs["include_dashboard"] = False
        address = "local"  # a fresh runtime: never join a cluster someone else started on this machine
    ray.init(address=address, **kwargs)


def configure_progress() -> None:
    """Progress bars on a terminal; otherwise Ray Data logs progress every few seconds, which `-q`
    (root logger at WARNING) turns off."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = logging.getLogger().isEnabledFor(logging.INFO)


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


def map_actors(ds, actor_class, constructor_args: tuple, resources, batch_size: int | None):
    """`ds` -> ``map_batches(actor_class)`` on a pool of ``resources.actors`` actors, each holding
    ``resources.cpus_per_actor`` CPUs and ``resources.gpus_per_actor`` GPUs (a jobs.common.config.Resources).

    Ray Data restarts a killed actor and retries its in-flight batches (max_restarts=-1 by default)."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        actor_class,
        fn_constructor_args=constructor_args,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=resources.actors),
        num_cpus=resources.cpus_per_actor,
        num_gpus=resources.gpus_per_actor,
    )
