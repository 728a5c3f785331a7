"""The limit (the default mode of ``python -m jobs.bench``): every Segmenter call as a ratio to the floor.

The floor is what no implementation can avoid: the VAE encode and one plain U-Net forward per image
(default attention processors, no capture, no method), through ``Segmenter.forward_plain``. Measured
side by side on the same images in one process, in interleaved rounds (floor, diffsegmenter, seediff,
maskdiffusion, all three; again; ...), so load on a shared machine falls on every configuration alike;
each configuration keeps its best round. Peak memory: the highest host RSS sampled during a
configuration's calls on CPU (weights included, as a job sees it), the peak allocated on CUDA.
"""

from __future__ import annotations

import os
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

    segs = {name: Segmenter(pipe, vocab, method=methods or "diffsegmenter", resolution=args.resolution)
            for name, methods in CONFIGS.items()}
    bs = args.batch_size
    batches = [images[i * bs : (i + 1) * bs] for i in range(max(1, len(images) // bs))]
    figures = {name: {"seconds": [], "peak_mb": 0.0, "stages": {}} for name in CONFIGS}

    def call(name: str, batch: list, keys: list[str]) -> None:
        seg = segs[name]
        if CONFIGS[name] is None:
            seg.forward_plain(batch, keys)
        else:
            seg.segment(batch, keys)

    for name in CONFIGS:  # warm-up: kernels, allocators, lazy initialisation
        call(name, batches[0], [f"warm{j}" for j in range(len(batches[0]))])
    for round_ in range(args.iters):
        batch = batches[round_ % len(batches)]
        keys = [f"img{round_}-{j}" for j in range(len(batch))]
        for name in CONFIGS:
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
            if not fig["seconds"] or seconds < min(fig["seconds"]):
                fig["stages"] = {k: v / len(batch) for k, v in seg.timings.items()}
            fig["seconds"].append(seconds)
    floor_s, floor_mb = min(figures["floor"]["seconds"]), figures["floor"]["peak_mb"]
    for fig in figures.values():
        fig["best_s"] = min(fig["seconds"])
        fig["images_per_s"] = 1.0 / fig["best_s"]
        fig["time_ratio"] = fig["best_s"] / floor_s
        fig["memory_ratio"] = fig["peak_mb"] / floor_mb if floor_mb else None
    return figures


def print_floor(figures: dict, device_type: str) -> None:
    memory = "peak GPU allocated" if device_type == "cuda" else "peak host RSS"
    print(f"  {'configuration':14s} {'s/image':>8s} {'img/s':>7s} {'x floor':>8s} {memory + ' (MB)':>22s} "
          f"{'x floor':>8s}  best round by stage (s/image)")
    for name, fig in figures.items():
        stages = " ".join(f"{k}={v:.2f}" for k, v in fig["stages"].items())
        print(f"  {name:14s} {fig['best_s']:8.2f} {fig['images_per_s']:7.2f} {fig['time_ratio']:7.2f}x "
              f"{fig['peak_mb']:22.0f} {fig['memory_ratio']:7.2f}x  {stages}", flush=True)
