"""The limit (the default mode of ``python -m jobs.bench``): every Segmenter call as a ratio to the floor.

The floor is what no implementation can avoid: the VAE encode and one plain U-Net forward per image
(default attention processors, no capture, no method), through ``Segmenter.forward_plain``. Measured
side by side on the same images in one process, in interleaved rounds (floor, diffsegmenter, seediff,
maskdiffusion, all three; again; ...), so load on a shared machine falls on every configuration alike.
Two ratios: of whole calls (each configuration's best round), and of stage minima (each stage's best
round; the VAE encode, the same work everywhere, pooled over all configurations), which is steadier
when other processes share the cores. Peak memory: the highest host RSS sampled during a
configuration's calls on CPU (weights included, as a job sees it), the peak allocated on CUDA.
"""

from __future__ import annotations

import os
import resource
import threading
import time

CONFIGS = {  # configuration -> methods of its Segmenter (None: the floor)
    "floor": None,
    "diffsegmenter": ["diffsegmenter"],
    "seediff": ["seediff"],
    "maskdiffusion": ["maskdiffusion"],
    "all three": ["diffsegmenter", "seediff", "maskdiffusion"],
}


def rss_mb() -> float:
    """This process's resident memory in MB (psutil when installed, else /proc/self/statm)."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far in MB (getrusage's ru_maxrss, in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory in MB during a `with` block: CUDA allocated on a GPU, sampled host RSS on CPU."""

    def __init__(self, device, interval_s: float = 0.005):
        self.device, self.interval_s, self.peak = device, interval_s, 0.0

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb())
            if self._done.wait(self.interval_s):
                break

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, rss_mb())


def run_floor(pipe, vocab, args, images: list) -> dict:
    """Times every configuration of CONFIGS on the same batches; returns the figures (see print_floor)."""
    from diffseg import Segmenter

    chosen = ["floor", *(c for c in getattr(args, "configs", None) or CONFIGS if c != "floor")]
    unknown = sorted(set(chosen) - set(CONFIGS))
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    segs = {name: Segmenter(pipe, vocab, method=CONFIGS[name] or "diffsegmenter", resolution=args.resolution)
            for name in chosen}
    bs = args.batch_size
    batches = [images[i * bs : (i + 1) * bs] for i in range(max(1, len(images) // bs))]
    figures = {name: {"seconds": [], "peak_mb": 0.0, "stages": {}, "rounds": []} for name in chosen}

    def call(name: str, batch: list, keys: list[str]) -> None:
        seg = segs[name]
        if CONFIGS[name] is None:
            seg.forward_plain(batch, keys)
        else:
            seg.segment(batch, keys)

    for name in chosen:  # warm-up: kernels, allocators, lazy initialisation
        call(name, batches[0], [f"warm{j}" for j in range(len(batches[0]))])
    for round_ in range(args.iters):
        batch = batches[round_ % len(batches)]
        keys = [f"img{round_}-{j}" for j in range(len(batch))]
        for name in chosen:
            seg, fig = segs[name], figures[name]
            seg.timings.clear()
            with PeakMemory(pipe.device) as mem:
                start = time.perf_counter()
                call(name, batch, keys)
                if pipe.device.type == "cuda":
                    import torch

                    torch.cuda.synchronize(pipe.device)
                seconds = (time.perf_counter() - start) / len(batch)
            fig["peak_mb"] = max(fig["peak_mb"], mem.peak)
            fig["rounds"].append({k: v / len(batch) for k, v in seg.timings.items()})
            fig["seconds"].append(seconds)
    vae = min(r["vae_encode"] for fig in figures.values() for r in fig["rounds"])
    for fig in figures.values():
        fig["stages"] = {k: min(r[k] for r in fig["rounds"]) for k in fig["rounds"][0]}
        fig["stage_sum_s"] = vae + sum(v for k, v in fig["stages"].items() if k != "vae_encode")
    floor_s, floor_mb = min(figures["floor"]["seconds"]), figures["floor"]["peak_mb"]
    for fig in figures.values():
        fig["best_s"] = min(fig["seconds"])
        fig["images_per_s"] = 1.0 / fig["best_s"]
        fig["time_ratio"] = fig["best_s"] / floor_s
        fig["stage_ratio"] = fig["stage_sum_s"] / figures["floor"]["stage_sum_s"]
        fig["memory_ratio"] = fig["peak_mb"] / floor_mb if floor_mb else None
    return figures


def count_host_syncs(pipe, vocab, args, images: list) -> int | None:
    """CUDA only: implicit host synchronisations (``.item()``, ``nonzero``, blocking copies) during one
    VAE encode + U-Net forward under the all-methods capture, counted by torch's sync debug mode
    (the stage timers' explicit synchronize calls are not counted). None on CPU."""
    import warnings

    import torch

    from diffseg import Segmenter

    if pipe.device.type != "cuda":
        return None
    seg = Segmenter(pipe, vocab, method=CONFIGS["all three"], resolution=args.resolution)
    batch = images[: args.batch_size]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            seg.capture_maps(batch, [f"sync{j}" for j in range(len(batch))])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def print_floor(figures: dict, device_type: str) -> None:
    memory = "peak GPU allocated" if device_type == "cuda" else "peak host RSS"
    print(f"  {'configuration':14s} {'s/image':>8s} {'img/s':>7s} {'x floor':>8s} {'stage minima':>13s} "
          f"{memory + ' (MB)':>22s} {'x floor':>8s}  best of each stage (s/image)")
    for name, fig in figures.items():
        stages = " ".join(f"{k}={v:.2f}" for k, v in fig["stages"].items())
        print(f"  {name:14s} {fig['best_s']:8.2f} {fig['images_per_s']:7.2f} {fig['time_ratio']:7.2f}x "
              f"{fig['stage_ratio']:12.2f}x {fig['peak_mb']:22.0f} {fig['memory_ratio']:7.2f}x  {stages}", flush=True)
