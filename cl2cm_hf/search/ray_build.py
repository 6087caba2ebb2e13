"""Encoding as a Ray Data job (``cl2cm-index ... --engine ray [--ray-address auto|ray://HOST:10001]``).

`build_index` plans on the driver as for one process (the items, the rerun cache, the pending chunks,
a window of 65,536 items at a time); for each window `RayEncoder` maps its chunks with Ray Data over
`workers` actors, each loading the checkpoint and opening the source once (a job a window: bounded
driver memory, at the price of an actor start a window) and writing one shard a chunk with
`encode_chunks` (atomic, content-named);
`build_index` then writes the index from the shards on the driver. Per-shard retry: a worker that dies
is restarted and its unfinished chunk is redone (Ray's ``max_restarts`` / ``max_task_retries``, up to
`retries` times a worker); a redone chunk writes the same shard name, so nothing is duplicated, and a
chunk that is not reported back fails the job (a rerun then encodes only what is missing).

Workers read the source and write ``--out/shards/`` by path: on a cluster both must be on a
filesystem every node mounts at the same path, and cl2cm-hf must be installed on every node."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.checks import check_int
from cl2cm_hf.search.encode import encode_chunks
from cl2cm_hf.search.fingerprint import load_checkpoint
from cl2cm_hf.search.index_build import IndexReport, build_index
from cl2cm_hf.search.sources import Item, SavedFeatures, open_source

# Tests only: a folder; a worker that has written chunk n's shard and finds ``kill-<n>`` there removes
# the file and dies (os._exit), so one worker is killed once, after its shard is on disk.
KILL_ENV = "CL2CM_TEST_RAY_KILL_DIR"


def require_ray():
    """The `ray` module, or a CL2CMError saying how to install it."""
    try:
        import ray
        import ray.data  # the engine is Ray Data: ray without the [data] extra is not enough
    except ImportError as err:
        raise CL2CMError(f"the ray engine needs Ray Data ({err}): pip install 'cl2cm-hf[ray]'") from None
    return ray


class _ChunkWriter:
    """A Ray Data actor: loads the checkpoint and opens the source once, then writes one shard a chunk."""

    def __init__(self, model, images, features, shards, namespace, settings):
        import ray

        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.model, self.processor = load_checkpoint(model, self.device)
        self.source = open_source(images, features)
        self.shards, self.namespace, self.settings = Path(shards), namespace, settings

    def __call__(self, batch: dict) -> dict:
        counts = []
        s = self.settings
        for number, blob in zip(batch["chunk"], batch["items"]):
            items = [Item(**{**fields, "files": tuple(fields["files"])}) for fields in json.loads(blob)]
            read = self.source.window(items) if isinstance(self.source, SavedFeatures) else self.source  # the chunk's rows only
            encode_chunks(self.model, self.processor, items, read, [list(range(len(items)))], self.shards, self.namespace,
                          s["batch_size"], s["num_workers"], s["max_pixels"], self.device, False, s["video"])
            _killed_for_test(int(number))
            counts.append(len(items))
        return {"chunk": np.asarray(batch["chunk"]), "items": np.asarray(counts)}


def _killed_for_test(number: int) -> None:
    folder = os.environ.get(KILL_ENV)
    if folder:
        try:
            os.remove(Path(folder) / f"kill-{number}")  # only one worker succeeds
        except FileNotFoundError:
            return
        os._exit(1)


class RayEncoder:
    """`build_index`'s ``encoder``: a window's pending chunks as one Ray Data job (module docstring).
    Its first call connects to the cluster at `address` (``"auto"``, ``"ray://HOST:10001"``), or starts
    a local one of `workers` CPUs, unless Ray is already initialised in this process; the connection
    lasts the ``with encoder:`` block (the build), and a cluster it started is shut down at its end. Workers run on a GPU when they are given one
    (`gpus_per_worker`), else on the CPU."""

    def __init__(self, model, *, images=None, videos=None, features=None, address: str | None = None, workers: int = 2,
                 retries: int = 3, gpus_per_worker: float = 0.0, progress: bool = True):
        self.model = str(Path(model).absolute()) if Path(model).is_dir() else str(model)
        media = images if videos is None else videos
        self.images = None if media is None else str(Path(media).absolute())
        self.features = None if features is None else str(Path(features).absolute())
        self.address, self.progress = address, progress
        self.workers, self.retries = check_int("ray_workers", workers), check_int("ray_retries", retries)
        if not 0 <= gpus_per_worker <= 1024:
            raise CL2CMError(f"gpus per ray worker must be from 0 to 1024, got {gpus_per_worker!r}")
        self.gpus_per_worker = gpus_per_worker
        self.written: list[int] = []  # the last window's chunk numbers reported back, in order (each once on success)
        self._started = False

    def __enter__(self) -> RayEncoder:
        """The build's span: the cluster is joined (or the local one started) at the first window with
        chunks to encode, so a refused ``--out`` or a rerun with nothing new starts no Ray."""
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            require_ray().shutdown()
            self._started = False

    def _connect(self):
        ray = require_ray()
        if not ray.is_initialized():
            try:
                # "local": a new cluster even where `ray start` runs one (ray.init(address=None) would join it)
                ray.init(address=self.address or "local", num_cpus=None if self.address else self.workers,
                         include_dashboard=False, logging_level=logging.WARNING)
            except ConnectionError as err:
                raise CL2CMError(f"ray address {self.address!r}: no Ray cluster to join ({err})") from None
            self._started = True
        ray.data.DataContext.get_current().enable_progress_bars = self.progress
        return ray

    def __call__(self, items, chunks, shards: Path, namespace: str, *, video, batch_size: int, num_workers: int,
                 max_pixels: int) -> None:
        ray = self._connect()
        # Items travel as JSON (the project never unpickles; Ray's own transport is its business).
        rows = [{"chunk": n, "items": json.dumps([asdict(items[i]) for i in chunk])} for n, chunk in enumerate(chunks)]
        settings = {"video": video, "batch_size": batch_size, "num_workers": num_workers, "max_pixels": max_pixels}
        with warnings.catch_warnings():
            # Ray 2.60 deprecates extra remote args but has no named parameter for the retries yet
            # (pyproject pins ray below 2.64, where they go): they bound Ray Data's default, endless retries.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            job = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                _ChunkWriter, batch_size=1, batch_format="numpy", num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))),
                num_gpus=self.gpus_per_worker, max_restarts=self.retries, max_task_retries=self.retries,
                fn_constructor_kwargs={"model": self.model, "images": self.images, "features": self.features,
                                       "shards": str(Path(shards).absolute()), "namespace": namespace, "settings": settings})
        self.written = [int(row["chunk"]) for row in job.iter_rows()]
        if sorted(self.written) != list(range(len(chunks))):
            raise RuntimeError(f"{shards}: the ray job reported chunks {sorted(self.written)}, expected each of 0..{len(chunks) - 1} "
                               "once; rerun to encode what is missing")


def build_index_on_ray(model, out, *, address: str | None = None, workers: int = 2, retries: int = 3,
                       gpus_per_worker: float = 0.0, **options) -> IndexReport:
    """`build_index(model, out, **options)` with the encoding run by `RayEncoder` (see its arguments)."""
    require_ray()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CL2CMError("the ray engine runs from one process (not under torchrun / accelerate launch): Ray spreads the work")
    if options.get("processor") is not None:
        raise CL2CMError("the ray engine's workers load the checkpoint's own processor; processor= is not supported")
    encoder = RayEncoder(model, images=options.get("images"), videos=options.get("videos"), features=options.get("features"),
                         address=address, workers=workers, retries=retries, gpus_per_worker=gpus_per_worker,
                         progress=options.get("progress", True))
    with encoder:
        return build_index(model, out, encoder=encoder, **options)
