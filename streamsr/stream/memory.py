"""The memory plan: pure arithmetic that predicts peak bytes before anything is allocated, and picks
the fastest plan that fits a budget (DESIGN.md section 3). No torch.

Device bytes: weights + one batch's activations + the frontier (when it lives on the device) + staging
buffers for the K/V a batch reads (current and prefetched next, when it lives elsewhere) + the batch's
state I/O tensors + on CUDA the context (driver, cuBLAS/cuDNN handles and workspaces: a constant, since
torch.cuda.max_memory_allocated does not see it). Host bytes: the runtime itself + the frontier (pinned
host placement: one buffer of exactly the frontier's bytes, page-locked with cudaHostRegister, so torch's
pinned allocator does not round it up to a power of two; stream/copies.py) + the store I/O buffers of one
batch (+ the device terms when the device is the CPU). Disk: the spilled frontier.

The plans are ranked by a modelled sweep time. Copies between the device and the host or the disk cost
time in that model even when they overlap with compute (a share of them is exposed), so the frontier
stays on the device whenever that fits: a host or disk plan is only chosen when the device plan with
the same batch does not fit (tests/test_memory.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..config import SR_SCALE, ModelConfig
from .planner import BatchShape, Grid, frontier_bound, reads_bound

PLACEMENTS = ("device", "host", "disk")  # where the K/V frontier lives (frontier.py places it)
F32 = 4
RUNTIME_HOST_BYTES = 840 << 20  # python + torch + diffusers + zarr: measured peak RSS of the smallest job,
# interpreter shutdown included (tools/bench_memory.py: 836-838 MiB; 715 MiB until main() returns)
ACTIVATION_MARGIN = 1.05  # allocator rounding and small temporaries the walk below does not name
PCIE_BYTES_PER_S = 20e9  # host <-> device; overlapped with compute on CUDA
EXPOSED_TRANSFER = 0.1  # share of the host frontier's copy time that compute does not hide (the first batch's
# reads, waits at the batch boundary, copy traffic competing with the kernels for memory bandwidth)
MEMORY_BYTES_PER_S = (1e10, 2e12)  # copies within the device's memory: (CPU, CUDA)
DISK_BYTES_PER_S = 1e9  # spilled frontier read/write, not overlapped
BATCH_OVERHEAD_BLOCKS = 0.5  # per-batch fixed cost (launches, Python, store I/O) in units of one block's compute
CUDA_CONTEXT_BYTES = 512 << 20  # CUDA context + cuBLAS/cuDNN handles and workspaces outside torch's allocator
# (~500 MiB on an H100 with lazy module loading; tools/gpu_check.py measures it)
CUDA_FLOPS = {2: 4e14, 4: 5e13}  # sustained model FLOP/s on CUDA by itemsize: bf16 at ~40% of an H100's dense
# peak, IEEE fp32 (no TF32); only to rank plans, not a promise
CPU_FLOPS = 5e10
BOUNCE_BLOCKS = 2  # disk placement on CUDA: pinned bounce slots for the spill writes, in blocks (frontier.py)


class BudgetError(ValueError):
    """No plan fits the budget; the message names the smallest budget that would."""


def parse_size(text: str) -> int:
    """'8GiB', '512MiB', '1.5G', '2e9' -> bytes (binary units for K/M/G/T with or without 'iB')."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise ValueError(f"size must look like 8GiB, 512MiB or 2e9, got {text!r}")
    power = " kmgt".index(m.group(2) or " ")
    return int(float(m.group(1)) * 1024 ** power)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def weight_bytes(cfg: ModelConfig, itemsize: int) -> int:
    """Parameters of the transformer (counted from the config, as InfDiT builds them) times itemsize."""
    c, hd, t = cfg.hidden, cfg.head_dim, cfg.block_tokens
    layer = (c * 4 * c + 4 * c) + (c * 3 * c + 3 * c) + 2 * hd + 4 * cfg.heads * hd + (c * c + c) \
        + (c * cfg.mlp_hidden + cfg.mlp_hidden) + (cfg.mlp_hidden * c + c) + (0 if cfg.k_uses_q_norm else 2 * hd)
    cross = (3 * c * cfg.lr_patch ** 2 + c) + (c * c + c) + (c * 2 * c + 2 * c) + (c * c + c) + 4 * hd \
        + (t + cfg.lr_window_tokens) * c + 2 * c
    embed = (6 * c * cfg.patch_size ** 2 + c) + (2 * cfg.time_freqs * c + c) + (c * c + c)
    vector = (cfg.vector_dim * c + c + c * c + c) if cfg.vector_dim else 0
    final = (c * 2 * c + 2 * c) + (c * cfg.out_per_token + cfg.out_per_token)
    return (cfg.layers * layer + cross + embed + vector + final) * itemsize


def slot_bytes(cfg: ModelConfig, itemsize: int) -> int:
    """K and V of one block at every layer (DESIGN.md section 3)."""
    return 2 * cfg.layers * cfg.block_tokens * cfg.hidden * itemsize


def activation_bytes(cfg: ModelConfig, blocks: int, reads: int, itemsize: int,
                     reference_attention: bool = False) -> int:
    """Peak bytes of the tensors alive while one batch of `blocks` blocks goes through the network.

    Walks one pass of the network (model.InfDiT.layer via engine.denoise_batch): the residual h and the
    LR tokens live throughout; the peak is in the attention phase, or in the layer-0 cross-attention, or
    the MLP. The layer frees what it no longer needs (the qkv projection once q, k, v are split off; the
    gathered K once the slot embedding is added; q and the slots before the output projection), so the
    attention phase peaks at the largest of: RoPE on q, k (qkv split, temporaries), the gather (q, k, v,
    the K/V pool with the frontier reads, the 4-slot K/V), the slot embedding (q, k, v, 4-slot K and V,
    K plus the embedding), the kernel (q, k, v, K+embedding and V slots, the output, its scores).
    """
    n, t, c, tw = blocks, cfg.block_tokens, cfg.hidden, cfg.lr_window_tokens
    ntc = n * t * c * itemsize
    px = n * 3 * cfg.block_size ** 2
    inputs = px * F32 * 3 + px * 2 * itemsize  # x, up, D (f32); cat(x, up) cast to the model dtype
    window = n * 3 * (3 * cfg.lr_block_size) ** 2 * (F32 + itemsize)
    lr_tokens = n * tw * c * itemsize
    rope = 4 * n * t * cfg.head_dim * F32
    resident = ntc + lr_tokens + rope + inputs + window
    pool = 2 * (n + reads) * t * c * itemsize
    scores = 2 * n * cfg.heads * t * 4 * t * F32 if reference_attention else 0  # explicit scores and softmax
    attention = max(ntc * 8, ntc * (3 + 8) + pool, ntc * (3 + 8 + 4), ntc * (3 + 8 + 1) + scores)
    cross = ntc * 5 + n * tw * c * itemsize * 5  # query path; key_value (2), k_norm, k+pos, tokens copy
    mlp = ntc * 4 + 2 * n * t * cfg.mlp_hidden * itemsize
    conv = 2 * lr_tokens  # window conv output and its masked copy, before the rearrange
    return int(ACTIVATION_MARGIN * (resident + max(attention, cross, mlp, conv)))


SHARD_BYTES = 8 * 2 ** 20  # a job's state shard holds about this much, or one batch if that is more
LR_SHARD_BLOCKS = (8, 64)  # LR blocks (rows, cols) per shard of a job's lr and alpha arrays


def io_bytes(cfg: ModelConfig, blocks: int) -> int:
    """Host buffers of a job's overlapped store I/O (jobs/pipeline.py), f32: the inputs of the batch being
    computed and of the next one (up, x, x_i, d_i each), the writes of the batch and of the 2 queued behind
    it (2 arrays each), the sampler step's temporaries, the writer's 2 open shards, the reader's cached
    shard of each of 3 state arrays and 4 of the LR, and the LR halo."""
    px = blocks * 3 * cfg.block_size ** 2 * F32
    shard = max(px, SHARD_BYTES)
    lr_shard = 3 * LR_SHARD_BLOCKS[0] * LR_SHARD_BLOCKS[1] * cfg.lr_block_size ** 2 * F32
    halo = 3 * (cfg.lr_block_size * int(math.sqrt(blocks)) + 8) ** 2 * F32 * 4
    return (2 * 4 + 3 * 2 + 3) * px + (2 + 3) * shard + 4 * lr_shard + halo


@dataclass(frozen=True)
class Prediction:
    batch: tuple[int, int]  # (bh, bw)
    placement: str  # where the frontier lives: device, host or disk
    device_bytes: int  # peak on the compute device (the CPU's RAM when device is cpu)
    host_bytes: int  # peak host RAM (includes device_bytes when the device is the CPU)
    disk_bytes: int  # spilled frontier on disk
    sweep_cost_blocks: float  # modelled time of one sweep in units of one block's compute (ranks plans; not seconds)
    parts: dict = field(default_factory=dict)  # named terms, bytes

    def fits(self, vram: int | None, ram: int | None, device_type: str) -> bool:
        ok_ram = ram is None or self.host_bytes <= ram
        ok_vram = device_type == "cpu" or vram is None or self.device_bytes <= vram
        return ok_ram and ok_vram


def predict(cfg: ModelConfig, itemsize: int, out_hw: tuple[int, int], batch: tuple[int, int], placement: str,
            device_type: str = "cpu", reference_attention: bool = False) -> Prediction:
    """Peak device/host/disk bytes of a job at output size out_hw (padded to whole blocks)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    rows = -(-out_hw[0] // cfg.block_size)
    cols = -(-out_hw[1] // cfg.block_size)
    bh, bw = min(batch[0], rows), min(batch[1], cols)
    n = bh * bw
    reads = reads_bound(BatchShape(bh, bw))
    slot = slot_bytes(cfg, itemsize)
    front = frontier_bound(Grid(rows, cols), BatchShape(bh, bw)) * slot
    cuda = device_type == "cuda"
    parts = {
        "weights": weight_bytes(cfg, itemsize),
        "activations": activation_bytes(cfg, n, reads, itemsize, reference_attention),
        "frontier": front if placement == "device" else 0,
        "staging": staging_bytes(placement, device_type, reads, slot),
        "cuda_context": CUDA_CONTEXT_BYTES if cuda else 0,
    }
    device = sum(parts.values())
    host_parts = {"runtime": RUNTIME_HOST_BYTES, "store_io": io_bytes(cfg, n),
                  "frontier_host": front if placement == "host" else 0,
                  "spill_io": (reads + BOUNCE_BLOCKS) * slot if placement == "disk" and device_type != "cpu" else 0}
    host = sum(host_parts.values()) + (device if device_type == "cpu" else parts["weights"])
    disk = front if placement == "disk" else 0
    blocks_total = rows * cols
    batches = -(-rows // bh) * -(-cols // bw)
    compute = blocks_total + batches * BATCH_OVERHEAD_BLOCKS  # unit: one block's compute
    moved = 2 * batches * reads * slot  # K/V brought in for every batch, and as much written out
    rate = blocks_per_second(cfg, device_type, itemsize)
    compute += moved / MEMORY_BYTES_PER_S[device_type == "cuda"] * rate  # the reads gathered into each batch's
    # key pool on the device: of two shapes with as many batches, the one that reads fewer blocks
    if placement == "host" and device_type != "cpu":  # overlapped with compute on a side stream, mostly
        transfer = moved / PCIE_BYTES_PER_S * rate
        cost = max(compute, transfer) + EXPOSED_TRANSFER * transfer
    elif placement == "disk":
        cost = compute + moved / DISK_BYTES_PER_S * rate
    else:
        cost = compute
    return Prediction((bh, bw), placement, device, host, disk, cost, {**parts, **host_parts})


MAX_SWEEPS_IN_FLIGHT = 8  # a fused group's denoiser sweeps (each holds a frontier) when no budget binds


def sweeps_in_flight(fuse: int, *, steps: int, sampler: str) -> int:
    """Denoiser sweeps of the largest fused group: one per predict and per correct (Heun's last step has none)."""
    return min(fuse * (2 if sampler == "heun" else 1), 2 * steps - 1 if sampler == "heun" else steps)


def fused_plan(pred: Prediction, *, steps: int, sampler: str, vram: int | None, ram: int | None,
               device_type: str) -> tuple[int, Prediction]:
    """Sampler steps per fused steps sweep (planner.fused_sweeps) for the plan `pred`, and the plan with
    its sweeps in flight counted: the most steps whose sweeps (each with its own frontier and staging)
    fit the budgets, at most MAX_SWEEPS_IN_FLIGHT of them; at least 1."""
    for fuse in range(steps, 0, -1):
        if sweeps_in_flight(fuse, steps=steps, sampler=sampler) > MAX_SWEEPS_IN_FLIGHT and fuse > 1:
            continue
        fused = fused_prediction(pred, fuse, steps=steps, sampler=sampler, device_type=device_type)
        if fused.fits(vram, ram, device_type) or fuse == 1:
            return fuse, fused
    raise ValueError("steps must be >= 1")


def fused_prediction(pred: Prediction, fuse: int, *, steps: int, sampler: str, device_type: str) -> Prediction:
    """The plan `pred` (one sweep in flight) with the sweeps in flight of `fuse` steps per steps sweep: each
    holds its own frontier and staging."""
    extra_device = pred.parts.get("frontier", 0) + pred.parts.get("staging", 0)
    extra_host = pred.parts.get("frontier_host", 0) + pred.parts.get("spill_io", 0)
    if device_type == "cpu":
        extra_host += extra_device
    sweeps = sweeps_in_flight(fuse, steps=steps, sampler=sampler)
    parts = {**pred.parts, "other_sweeps": (sweeps - 1) * (extra_device + extra_host)}
    return Prediction(pred.batch, pred.placement, pred.device_bytes + (sweeps - 1) * extra_device,
                      pred.host_bytes + (sweeps - 1) * extra_host, pred.disk_bytes * sweeps, pred.sweep_cost_blocks,
                      parts)


def with_heap_reuse(pred: Prediction, *, ram: int | None, device_type: str) -> Prediction:
    """The plan `pred` with the freed heap memory a run keeps between batches for the next batch's tensors
    (jobs/pipeline.keep_freed_memory; without it every batch maps and faults its tensors in again, a third of a
    small model's time in the kernel): what one batch allocates and frees on the host (its store I/O buffers,
    and its activations when the device is the CPU), at most HEAP_REUSE_BYTES, and no more than a --ram
    budget leaves above the plan. Counted as the host part `heap_reuse`, which the run reads back from the
    job's plan (a plan of an earlier version has none: the heap is trimmed at every commit, as then)."""
    transient = pred.parts.get("store_io", 0) + (pred.parts.get("activations", 0) if device_type == "cpu" else 0)
    room = HEAP_REUSE_BYTES if ram is None else max(0, ram - pred.host_bytes)
    keep = min(HEAP_REUSE_BYTES, transient, room)
    return Prediction(pred.batch, pred.placement, pred.device_bytes, pred.host_bytes + keep, pred.disk_bytes,
                      pred.sweep_cost_blocks, {**pred.parts, "heap_reuse": keep})


HEAP_REUSE_BYTES = 128 << 20  # freed memory kept between batches: more than a small model's 8x8 batch leaves free
# (~93 MiB for 128-px blocks, tools/bench_engine.py), small next to the runtime


def staging_bytes(placement: str, device_type: str, reads: int, slot: int) -> int:
    """Device copies of frontier entries: none for a device frontier; on CUDA the batch's reads, the next
    batch's (prefetched) and the batch's own new entries kept for it (fewer than its reads), together at
    most two batches' reads; on the CPU a host entry is read in place and a disk entry is loaded for the
    batch that reads it."""
    if placement == "device" or (placement == "host" and device_type == "cpu"):
        return 0
    return (2 if device_type != "cpu" else 1) * reads * slot


def block_flops(cfg: ModelConfig) -> int:
    """Multiply-adds x 2 of one block evaluation's attention layers (QKV, out and MLP projections at
    mlp = 4 hidden, and the scores and values over 4 key slots): the ranking's unit of work."""
    return 2 * cfg.layers * cfg.block_tokens * (12 * cfg.hidden ** 2 + 8 * cfg.block_tokens * cfg.hidden)


def blocks_per_second(cfg: ModelConfig, device_type: str, itemsize: int = 4) -> float:
    """Rough block throughput, to express transfer time in block-compute units (ranking only)."""
    flops = CUDA_FLOPS.get(itemsize, CUDA_FLOPS[4]) if device_type == "cuda" else CPU_FLOPS
    return flops / block_flops(cfg)


def candidate_batches(rows: int, cols: int, limit: int = 64) -> list[tuple[int, int]]:
    """Batch shapes to consider: powers of two and full rows, no larger than the grid."""
    sizes_r = sorted({min(rows, 2 ** k) for k in range(8)})
    sizes_c = sorted({min(cols, 2 ** k) for k in range(8)} | {cols})
    return [(r, c) for r in sizes_r for c in sizes_c if r * c <= limit]


def plan(cfg: ModelConfig, itemsize: int, out_hw: tuple[int, int], vram: int | None, ram: int | None,
         device_type: str = "cpu", batch: tuple[int, int] | None = None, placement: str | None = None,
         reference_attention: bool = False) -> Prediction:
    """The fastest plan (by the model) whose prediction fits; BudgetError with the smallest fitting budget.

    batch / placement: fixed by the user, or None to let the planner choose.
    """
    rows = -(-out_hw[0] // cfg.block_size)
    cols = -(-out_hw[1] // cfg.block_size)
    shapes = [batch] if batch else candidate_batches(rows, cols)
    placements = ("device", "disk") if device_type == "cpu" else PLACEMENTS  # on a CPU, host is the device
    if placement:
        placements = (placement,)
    options = [predict(cfg, itemsize, out_hw, s, p, device_type, reference_attention)
               for s in shapes for p in placements]
    fitting = [o for o in options if o.fits(vram, ram, device_type)]
    if fitting:
        return min(fitting, key=lambda o: (o.sweep_cost_blocks, o.device_bytes, o.host_bytes))
    smallest = min(options, key=lambda o: (o.host_bytes if device_type == "cpu" else o.device_bytes, o.host_bytes))
    need = (f"--ram {format_bytes(smallest.host_bytes)}" if device_type == "cpu"
            else f"--vram {format_bytes(smallest.device_bytes)} --ram {format_bytes(smallest.host_bytes)}")
    raise BudgetError(f"no plan fits the budget for a {out_hw[1]}x{out_hw[0]} output; the smallest that would: "
                      f"{need} (batch {smallest.batch[0]}x{smallest.batch[1]}, frontier on {smallest.placement})")


def output_size(lr_hw: tuple[int, int], cfg: ModelConfig) -> tuple[int, int]:
    """Padded output size of an LR image."""
    lb = cfg.lr_block_size
    return (-(-lr_hw[0] // lb) * lb * SR_SCALE, -(-lr_hw[1] // lb) * lb * SR_SCALE)
