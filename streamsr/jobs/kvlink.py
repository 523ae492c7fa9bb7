"""The K/V hand-offs of column bands between ranks (stream/bands.py): point-to-point on torch.distributed.

A band sends, per batch row and per denoiser sweep in flight, the K/V of its last block column to the rank
of the band to its right: a header (what it is and its shape) and the bytes, in the order it computes
them; the right band receives them in the same order, before its first batch of that row. K/V are derived
data, never persisted: a relaunched group replays each band's part of its stage's sweep from the start,
and the hand-offs flow again (jobs/run.py). Sends are asynchronous (isend) and finished before the next
ones; every wait runs in a helper thread while this thread watches the peer's heartbeat, so a dead or
stuck rank stops this one with a one-line error instead of a hang.

The transport is the group's gloo process group, so the K/V travel through host memory. NCCL
(device-to-device, the ~147 MB of the official model's block in < 1 ms over NVLink) is the next step on
GPUs; it has not run here (no GPU).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from .ranks import RankFailed, RankGroup

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HEADER = 12  # int64: tag (3), snapshot flag, dtype, shape (7)
_TAG_HEADER, _TAG_BYTES = 11, 12


@dataclass(frozen=True)
class HandoffTag:
    """Which hand-off this is: the sweep in flight (kind code, sampler step) and the batch row."""

    kind: int
    step: int
    row: int


@dataclass
class KVLink:
    """This rank's hand-offs: to the band on its right (`right` rank) and from the one on its left."""

    group: RankGroup
    left: int | None
    right: int | None
    _pending: list = field(default_factory=list)  # (work, tensors kept alive) of the sends not finished

    def send(self, kv: torch.Tensor, tag: HandoffTag, *, snapshot: bool = False) -> None:
        """Hand kv (n, L, 2, B, T, H, D) to the band on the right, after finishing the previous send;
        `snapshot`: the bands snapshot their frontiers after this row (the first band decides)."""
        import torch.distributed as dist

        self.flush()
        data = kv.detach().to("cpu").contiguous()  # (n, L, 2, B, T, H, D)
        header = torch.tensor([tag.kind, tag.step, tag.row, int(snapshot), _DTYPES.index(data.dtype), *data.shape],
                              dtype=torch.int64)
        payload = data.view(-1).view(torch.uint8)
        self._pending = [(self._post(dist.isend, header, self.right, _TAG_HEADER, "sending K/V"), header),
                         (self._post(dist.isend, payload, self.right, _TAG_BYTES, "sending K/V"), payload)]

    def receive(self, tag: HandoffTag, device: torch.device) -> tuple[torch.Tensor, bool]:
        """The hand-off `tag` from the band on the left: (n, L, 2, B, T, H, D) on `device`, and whether the
        bands snapshot after this row."""
        import torch.distributed as dist

        header = torch.empty(HEADER, dtype=torch.int64)
        self._finish(self._post(dist.irecv, header, self.left, _TAG_HEADER, "receiving K/V"), self.left, "receiving K/V")
        got = HandoffTag(*(int(v) for v in header[:3]))
        if got != tag:
            raise RankFailed(f"rank {self.left} handed over K/V for {got}, this rank expected {tag}: the ranks ran "
                             "different plans")
        dtype, shape = _DTYPES[int(header[4])], tuple(int(v) for v in header[5:])
        payload = torch.empty(torch.Size(shape).numel() * dtype.itemsize, dtype=torch.uint8)
        self._finish(self._post(dist.irecv, payload, self.left, _TAG_BYTES, "receiving K/V"), self.left, "receiving K/V")
        return payload.view(dtype).view(shape).to(device), bool(header[3])  # (n, L, 2, B, T, H, D)

    def flush(self) -> None:
        """Finish the sends in flight (before the next one, and at the end of a run)."""
        pending, self._pending = self._pending, []
        for work, _ in pending:
            self._finish(work, self.right, "sending K/V")

    @staticmethod
    def _post(op, tensor: torch.Tensor, peer: int, tag: int, what: str):
        """Start a point-to-point operation; a peer already gone is a one-line error, not a traceback."""
        try:
            return op(tensor, peer, tag=tag)
        except (RuntimeError, OSError) as exc:
            raise RankFailed(f"lost rank {peer} while {what} ({_reason(exc)}); relaunch the same command to "
                             "resume") from None

    def _finish(self, work, peer: int, what: str) -> None:
        """Wait for a point-to-point operation with `peer`, watching its heartbeat and the failure key."""
        done, error = threading.Event(), []

        def wait() -> None:
            try:
                work.wait()
            except Exception as exc:  # the peer's connection closed: it died
                error.append(exc)
            done.set()

        threading.Thread(target=wait, name="streamsr-kv-wait", daemon=True).start()
        self.group._wait(done.is_set, waiting_on=peer, stop=None)
        if error:
            raise RankFailed(f"lost rank {peer} while {what} ({_reason(error[0])}); relaunch the same command to resume")


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    return "connection reset" if "reset" in text else "connection closed" if "closed" in text else type(exc).__name__


def band_link(group: RankGroup | None, *, rank: int, bands: int, stages: int) -> KVLink | None:
    """The link of `rank` to its neighbouring bands; None without bands (or for an idle rank)."""
    if group is None or bands == 1 or rank >= stages * bands:
        return None
    band = rank % bands
    return KVLink(group, left=rank - 1 if band > 0 else None, right=rank + 1 if band < bands - 1 else None)
