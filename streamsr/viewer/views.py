"""What `streamsr view` shows for a path: a job dir (x4, or the latest started stage of an x16 chain),
an existing DeepZoom image, or a zarr / OME-Zarr image, as a `View` of named DeepZoom layers plus the
status the page polls (/api/info, /api/status)."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import BadInput
from ..io.zarr_input import is_zarr_dir, ome_multiscales
from ..jobs.progress import task_label
from ..jobs.store import JobDir
from .job import JobLrLayer, JobOutputLayer, JobView
from .tiles import VIEWER_TILE, DeepZoom, StaticDzi, TileCache, ZarrLayer


class View:
    """What the server shows: named layers (DeepZoom sources) and a status."""

    def __init__(self, kind: str, title: str, layers: dict, *, job: JobView | None = None,
                 extra: dict | None = None):
        self.kind, self.title, self.layers, self.job, self.extra = kind, title, layers, job, extra or {}
        first = next(iter(layers.values()))
        self.width, self.height = first.width, first.height

    def tiles_version(self) -> int:
        """Grows whenever output tiles change (done anchor batches of a job; 0 for a fixed image)."""
        return self.job.done_batches() if self.job is not None else 0

    def info(self) -> dict:
        """What is shown: kind, size, layers and their descriptor URLs (/api/info)."""
        v = self.tiles_version()
        return {"kind": self.kind, "title": self.title, "width": self.width, "height": self.height,
                "tile_size": VIEWER_TILE, "tiles_version": v,
                "layers": {name: f"dzi/{name}.dzi?v={v}" for name in self.layers}}

    def status(self) -> dict:
        """Job progress and settings plus tile state (/api/status); a fixed image is "static"."""
        if self.job is None:
            return {"kind": self.kind, "title": self.title, "status": "static", "width": self.width,
                    "height": self.height, "tiles_version": 0, **self.extra}
        from ..jobs.run import job_status  # noqa: PLC0415 - heavy (torch), only for jobs

        job = self.job
        s = job_status(job.dir)
        k = job.done_batches()
        cursor = s["cursor"]
        phase = None
        if cursor < len(job.tasks):
            task = job.tasks[cursor]
            phase = task_label(task, s["job"]["steps"])
            phase += f", batch {task.batch.index + 1}/{job.n_batches}" if task.batch is not None else ""
        grid = job.geo.grid
        s.update(kind=self.kind, title=self.title, phase=phase, tiles_version=k, anchor_batches_done=k,
                 anchor_batches=job.n_batches, output_blocks_done=job.done_blocks(k=k),
                 output_blocks=grid.rows * grid.cols, width=self.width, height=self.height, **self.extra)
        return s


def _job_view(path: Path) -> tuple[JobView, dict]:
    """The job dir at `path`, or the latest started stage of the x16 chain there, and what to add to
    its status."""
    top = JobDir(path)
    shown = top.latest()
    if not shown.is_job():
        raise BadInput(f"x16 job {path} has not started a stage yet")
    extra = {"chain": str(path), "chain_stage": shown.root.name} if top.is_chain() else {}
    return JobView(shown), extra


def _guess_axes(shape: tuple) -> str:
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        return "yxc" if shape[2] <= 4 else "cyx"
    if len(shape) == 4 and shape[1] <= 4:
        return "tcyx"  # (1, C, H, W) like the job arrays
    raise BadInput(f"cannot tell the axes of a zarr array of shape {shape}")


def _open_zarr(path: Path, value_range=None) -> ZarrLayer:
    import zarr  # noqa: PLC0415

    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for a damaged store
        raise BadInput(f"cannot open {path} as zarr: {exc}") from None
    if isinstance(node, zarr.Array):
        return ZarrLayer([(1, node)], _guess_axes(node.shape), value_range=value_range)
    multiscales = ome_multiscales(dict(node.attrs))
    if multiscales:
        ms = multiscales[0]
        axes = "".join(a["name"] if isinstance(a, dict) else a for a in ms["axes"])
        if "y" not in axes or "x" not in axes:
            raise BadInput(f"{path}: OME-Zarr axes {axes!r} have no y and x")
        arrays = [node[d["path"]] for d in ms["datasets"]]
        h0 = arrays[0].shape[axes.index("y")]
        levels = []  # (factor, array), finest first
        for arr in arrays:
            ratio = h0 / max(arr.shape[axes.index("y")], 1)
            g = 1 << max(0, round(math.log2(ratio)))
            if abs(ratio - g) <= g * 0.05 + 1 and all(g != lv[0] for lv in levels):
                levels.append((g, arr))
        return ZarrLayer(levels, axes, value_range=value_range)
    for name in ("output", "0", "s0"):
        if name in node and isinstance(node[name], zarr.Array):
            return ZarrLayer([(1, node[name])], _guess_axes(node[name].shape), value_range=value_range)
    raise BadInput(f"{path}: a zarr group with no image (no OME multiscales, no `output` array)")


def open_view(path, *, cache_mb: int = 256) -> View:
    """What `path` is (job dir, x16 job dir, .dzi, OME-Zarr / zarr) as a View."""
    path = Path(path).expanduser().resolve()
    cache = TileCache(cache_mb << 20)
    if not path.exists():
        raise BadInput(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() in (".dzi", ".xml"):
            return View("dzi", path.name, {"output": StaticDzi(path)})
        raise BadInput(f"{path}: not a job dir, a .dzi or a zarr store")
    parent = JobDir(path.parent)
    if parent.is_job() and path == parent.store:
        path = parent.root  # the store of a job: show the job
    if JobDir(path).is_job() or JobDir(path).is_chain():
        job, extra = _job_view(path)
        lr = JobLrLayer(job)
        layers = {"lr": DeepZoom("lr", lr, cache), "output": DeepZoom("output", JobOutputLayer(job, lr), cache)}
        return View("job", str(path), layers, job=job, extra=extra)
    dzis = sorted(path.glob("*.dzi"))
    if len(dzis) == 1 and not is_zarr_dir(path):
        return View("dzi", dzis[0].name, {"output": StaticDzi(dzis[0])})
    if is_zarr_dir(path):
        return View("zarr", str(path), {"output": DeepZoom("output", _open_zarr(path), cache)})
    raise BadInput(f"{path}: not a streamsr job dir, a .dzi or a zarr store")
