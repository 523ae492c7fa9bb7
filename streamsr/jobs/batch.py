"""Batch upscales: many inputs (files, folders, globs) into an output folder, one job per image.

A batch dir holds `batch.json` (`Batch`: the settings and every item's input, output and state) and, under
`jobs/`, the job dir of the image in progress. batch.json is rewritten atomically after each image, so an
interrupted batch continues where it stopped (`streamsr resume BATCHDIR`, or the same command again): done
images are not redone and the image in progress resumes from its job dir. An existing output is skipped
unless `overwrite`; an image that fails (a corrupt file, say) is recorded with its one-line reason and the
others are still done. The batch dir is removed when every image is done or skipped.
"""

from __future__ import annotations

import glob
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import JobConfig
from ..errors import BadInput, StreamsrError
from .progress import BatchPosition
from .run import Interrupted
from .store import JobDir, write_json_atomic

BATCH_FILE = "batch.json"
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
STATES = ("pending", "done", "skipped", "failed")
DEFAULT_BATCH_DIR = ".streamsr-batch"  # inside the output folder when --job is not given


@dataclass(frozen=True)
class BatchItem:
    """One image of a batch: where it comes from, where it goes, and how far it got."""

    input: str
    output: str
    state: str = "pending"
    error: str = ""

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"batch item state must be one of {STATES}, got {self.state!r}")


@dataclass(frozen=True)
class Batch:
    """batch.json: the settings shared by every image, and the images."""

    model: str
    job: JobConfig
    scale: int
    auto: tuple[bool, bool]
    overwrite: bool
    items: tuple[BatchItem, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"version": 1, "model": self.model, "job": self.job.to_dict(), "scale": self.scale,
                "auto": list(self.auto), "overwrite": self.overwrite,
                "items": [vars(item) for item in self.items]}

    @classmethod
    def from_json(cls, data: dict) -> "Batch":
        return cls(data["model"], JobConfig.from_dict(data["job"]), int(data["scale"]),
                   (bool(data["auto"][0]), bool(data["auto"][1])), bool(data["overwrite"]),
                   tuple(BatchItem(**item) for item in data["items"]))

    def same_settings(self, other: "Batch") -> bool:
        return (self.model, self.job, self.scale) == (other.model, other.job, other.scale)

    def counts(self) -> dict[str, int]:
        return {state: sum(item.state == state for item in self.items) for state in STATES}


def is_batch_dir(path) -> bool:
    return (Path(path) / BATCH_FILE).is_file()


def read_batch(batch_dir: Path) -> Batch:
    try:
        return Batch.from_json(json.loads((batch_dir / BATCH_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise BadInput(f"batch dir {batch_dir}: cannot read {BATCH_FILE}: {exc}") from None


def has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def is_batch_request(inputs: list[str], output: str) -> bool:
    """Several inputs, a folder or a glob as input, or an existing folder (not a zarr store) as output."""
    if len(inputs) != 1:
        return True
    src, out = Path(inputs[0]), Path(output)
    if has_glob(inputs[0]) and not src.exists():
        return True
    if src.is_dir() and src.suffix.lower() != ".zarr" and not (src / "zarr.json").exists() \
            and not (src / ".zarray").exists():
        return True
    return output.endswith(("/", "\\")) or (out.is_dir() and out.suffix.lower() not in (".zarr", ".dzi"))


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    walk = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in walk if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def expand_inputs(specs: list[str], *, recursive: bool) -> list[tuple[Path, Path]]:
    """(input file, its name relative to the output folder) for every file, folder image and glob match."""
    found: list[tuple[Path, Path]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found += [(p, p.relative_to(path)) for p in _folder_images(path, recursive)]
        elif path.exists():
            found.append((path, Path(path.name)))
        elif has_glob(spec):
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=recursive) if Path(p).is_file())
            if not matches:
                raise BadInput(f"no file matches {spec!r}")
            found += [(p, Path(p.name)) for p in matches]
        else:
            raise BadInput(f"input {spec} does not exist")
    if not found:
        raise BadInput(f"no images found in {', '.join(specs)} (looked for {', '.join(INPUT_SUFFIXES)})")
    return found


def plan_items(specs: list[str], out_dir: Path, *, recursive: bool, suffix: str) -> tuple[BatchItem, ...]:
    """The batch's items; BadInput when two inputs map to one output or an output would overwrite an input."""
    items, seen, found = [], {}, expand_inputs(specs, recursive=recursive)
    inputs = {p.resolve() for p, _ in found}
    for src, rel in found:
        out = (out_dir / rel).with_suffix(suffix).resolve()
        if out in inputs:
            raise BadInput(f"output {out} would overwrite the input {out}; choose another -o folder or --format")
        if out in seen and seen[out] != src.resolve():
            raise BadInput(f"inputs {seen[out]} and {src} would both be written to {out}")
        if out not in seen:
            seen[out] = src.resolve()
            items.append(BatchItem(str(src.resolve()), str(out)))
    return tuple(items)


def _save(batch_dir: Path, batch: Batch) -> None:
    write_json_atomic(batch_dir / BATCH_FILE, batch.to_json())


def start_batch(batch_dir: Path, batch: Batch) -> Batch:
    """Write a new batch.json, or continue the batch already there (same settings), keeping its states."""
    batch_dir.mkdir(parents=True, exist_ok=True)
    if is_batch_dir(batch_dir):
        old = read_batch(batch_dir)
        if not old.same_settings(batch):
            raise BadInput(f"batch dir {batch_dir} holds a batch with other model, scale or settings; "
                           f"resume it with: streamsr resume {batch_dir}, or remove it")
        states = {(item.input, item.output): item for item in old.items}
        batch = replace(batch, items=tuple(
            replace(item, state=states[item.input, item.output].state) if (item.input, item.output) in states
            and states[item.input, item.output].state in ("done", "skipped") else item for item in batch.items))
    elif any(batch_dir.iterdir()):
        raise BadInput(f"batch dir {batch_dir} is not empty and holds no streamsr batch")
    _save(batch_dir, batch)
    return batch


def run_batch(batch_dir: Path, batch: Batch, *, progress: bool, log) -> Batch:
    """Upscale every pending image (one job dir under batch_dir/jobs at a time); returns the final batch.

    Raises Interrupted on Ctrl-C (batch.json says where it stopped); other errors of one image fail
    that image only.
    """
    from .flows import upscale
    from .run import remove_job_dir

    n = len(batch.items)
    for index, item in enumerate(batch.items):
        if item.state in ("done", "skipped"):
            continue
        job = JobDir(batch_dir / "jobs" / f"{index:05d}")
        if Path(item.output).exists() and not batch.overwrite and not job.root.exists():
            new = replace(item, state="skipped", error="")
            log(f"image {index + 1}/{n}: {item.output} exists, skipped (--overwrite to redo it)")
        else:
            log(f"image {index + 1}/{n}: {item.input} -> {item.output}")
            try:
                Path(item.output).parent.mkdir(parents=True, exist_ok=True)
                upscale(item.input, item.output, model_dir=batch.model, job_dir=job.root, cfg=batch.job,
                        scale=batch.scale, progress=BatchPosition(index + 1, n) if progress else False,
                        auto_batch=batch.auto[0], auto_placement=batch.auto[1])
                new = replace(item, state="done", error="")
            except (Interrupted, KeyboardInterrupt):
                raise Interrupted(f"interrupted at image {index + 1}/{n}; resume with: "
                                  f"streamsr resume {batch_dir}") from None
            except (StreamsrError, OSError, MemoryError) as exc:
                why = str(exc) or type(exc).__name__
                new = replace(item, state="failed", error=why)
                log(f"image {index + 1}/{n} failed: {why}")
            if new.state == "done" and job.root.exists():
                remove_job_dir(job) if job.is_job() else shutil.rmtree(job.root, ignore_errors=True)
        batch = replace(batch, items=batch.items[:index] + (new,) + batch.items[index + 1:])
        _save(batch_dir, batch)
    return batch


def summary_lines(batch: Batch) -> list[str]:
    counts = batch.counts()
    lines = [f"batch: {counts['done']} done, {counts['skipped']} skipped (output exists), "
             f"{counts['failed']} failed, {counts['pending']} pending, of {len(batch.items)} image(s)"]
    lines += [f"failed: {item.input}: {item.error}" for item in batch.items if item.state == "failed"]
    return lines


def finish_batch(batch_dir: Path, batch: Batch, *, keep: bool) -> None:
    """Remove the batch dir once nothing is left to do (unless keep); failed images keep it for a retry."""
    counts = batch.counts()
    if not keep and not counts["failed"] and not counts["pending"]:
        shutil.rmtree(batch_dir, ignore_errors=True)


def upscale_batch(specs: list[str], out_dir, *, model_dir=None, batch_dir=None, cfg: JobConfig | None = None,
                  scale: int = 4, recursive: bool = False, suffix: str = ".png", overwrite: bool = False,
                  keep_job: bool = False, progress: bool = True, auto_batch: bool = False,
                  auto_placement: bool = False, log=print) -> Batch:
    """Upscale files, folders and globs into the folder `out_dir` (same relative names, `suffix`).

    batch_dir: where batch.json and the job in progress live (default out_dir/.streamsr-batch, so the same
    command run again continues the batch). Returns the final Batch; see summary_lines.
    """
    from .create import resolve_model_dir

    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output {out_dir} is a file; several inputs need an output folder (-o DIR)")
    items = plan_items(specs, out_dir, recursive=recursive, suffix=suffix)
    batch_dir = Path(batch_dir).resolve() if batch_dir else out_dir / DEFAULT_BATCH_DIR
    batch = Batch(str(resolve_model_dir(model_dir)), cfg or JobConfig(), scale, (auto_batch, auto_placement),
                  overwrite, items)
    batch = start_batch(batch_dir, batch)
    batch = run_batch(batch_dir, batch, progress=progress, log=log)
    finish_batch(batch_dir, batch, keep=keep_job)
    return batch


def resume_batch(batch_dir, *, progress: bool = True, log=print) -> Batch:
    """Continue an interrupted batch: the pending and failed images; returns the final Batch."""
    batch_dir = Path(batch_dir).resolve()
    batch = run_batch(batch_dir, read_batch(batch_dir), progress=progress, log=log)
    finish_batch(batch_dir, batch, keep=False)
    return batch
