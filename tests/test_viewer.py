"""`streamsr view`: tiles and status over HTTP, and the page in a real headless Chromium.

The jobs are built by hand (no model run) through the job store: a 90x45 LR gradient (R along x, G along
y, B = 0.8) and an output checkerboard of 32 px blocks in two saturated colours with little blue, so a
pixel tells at a glance whether it shows the LR (B ~ 204) or the output (B <= 60).
Chromium comes from tools/install_test_deps.sh (CI); these tests never skip for want of it. It is driven
over the DevTools protocol (stdlib only: a pipe, no websocket).
Set STREAMSR_SCREENSHOT_DIR to keep the screenshots.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from streamsr.config import JobConfig, ModelConfig
from streamsr.errors import BadInput
from streamsr.io.pyramid import reduce2
from streamsr.jobs.manifest import Geometry, InputInfo, Manifest, ModelRef, OutputRef
from streamsr.jobs.store import JobStore
from streamsr.stream.planner import BatchShape, TaskKind, job_tasks
from streamsr.viewer import server as viewer
from streamsr.viewer import tiles

LR_H, LR_W, BS = 45, 90, 32  # output 180 x 360, grid 6 x 12 blocks (padded to 192 x 384)
H, W = 4 * LR_H, 4 * LR_W
CFG = JobConfig(steps=2, sampler="euler", batch_rows=2, batch_cols=4, anchor="none")  # 3 x 3 batches
COLORS = np.array([(255, 200, 0), (0, 160, 60)], dtype=np.uint8)
LR_BLUE = 0.8
OSD_VERSION = "6.1.1"


# ---- synthetic jobs -------------------------------------------------------------------------------------
def lr_pattern() -> np.ndarray:
    """(LR_H, LR_W, 3) in [0, 1]."""
    y, x = np.mgrid[0:LR_H, 0:LR_W].astype(np.float32)
    return np.stack([x / (LR_W - 1), y / (LR_H - 1), np.full_like(x, LR_BLUE)], axis=-1)


def out_pattern(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return COLORS[((y // BS) + (x // BS)) % 2]


def lr_expected(iy, ix) -> np.ndarray:
    """The LR upsampled x4 (bilinear, half-pixel centres) at output pixel (iy, ix): analytic."""
    sx = np.clip((np.asarray(ix) + 0.5) / 4 - 0.5, 0, LR_W - 1)
    sy = np.clip((np.asarray(iy) + 0.5) / 4 - 0.5, 0, LR_H - 1)
    return np.stack([sx / (LR_W - 1) * 255, sy / (LR_H - 1) * 255, np.full_like(sx, LR_BLUE * 255)], axis=-1)


def make_job(root: Path, done_batches: int | None = None, inflight: int = 0) -> Manifest:
    """A job dir as create_job/run_job leave it: finished (done_batches None) or inside the anchor
    sweep with `done_batches` committed and `inflight` more batches written but not committed."""
    geo = Geometry(LR_H, LR_W, BS)
    tasks = job_tasks(geo.grid, BatchShape(CFG.batch_rows, CFG.batch_cols), CFG.steps, CFG.sampler, CFG.anchor)
    n = len(tasks.batches)
    anchor_start = tasks.first(TaskKind.ANCHOR)
    finished = done_batches is None
    cursor = len(tasks) if finished else anchor_start + done_batches
    manifest = Manifest(
        stage="x4", status="done" if finished else "running", created="2026-01-01T00:00:00+00:00",
        model=ModelRef("/models/tiny", "0" * 64, ModelConfig(block_size=BS, vector_dim=0)),
        input=InputInfo("/data/gradient.png", "1" * 64, LR_W, LR_H, "RGB", 8), output=OutputRef("/data/out.png"),
        job=CFG, geometry=geo, sigmas=(40.0, 0.002, 0.0), cursor=cursor, seconds={"total": 12.5},
        model_blocks_done=tasks.model_blocks(),  # the anchor sweep comes after every model sweep
        total_tasks=len(tasks),
    )
    store = JobStore.create(root, manifest)
    lh, lw = geo.lr_padded
    lr = np.ones((1, 3, lh, lw), dtype=np.float32)  # white padding: must never be shown
    lr[0, :, :LR_H, :LR_W] = lr_pattern().transpose(2, 0, 1) * 2 - 1
    store.array("lr")[...] = lr
    hh, hw = geo.hr_padded
    pattern = out_pattern(hh, hw)
    written = n if finished else done_batches + inflight
    for batch in list(tasks.batches)[:written]:  # the anchor sweep writes one block batch at a time
        y0, x0 = batch.row0 * BS, batch.col0 * BS
        y1, x1 = y0 + batch.rows * BS, x0 + batch.cols * BS
        store.array("output")[y0:y1, x0:x1, :] = pattern[y0:y1, x0:x1]
    store.commit()
    return store.manifest


def finish_job(root: Path) -> None:
    """What the rest of the anchor sweep and the export do to the job dir: all blocks, then the manifest."""
    store = JobStore.open(root)
    store.array("output")[...] = out_pattern(*store.geometry.hr_padded)
    store.commit(cursor=store.manifest.total_tasks, status="done")


def block_done(r: int, c: int, done_batches: int | None) -> bool:
    return done_batches is None or (r // CFG.batch_rows) * 3 + c // CFG.batch_cols < done_batches


# ---- HTTP helpers ------------------------------------------------------------------------------------
def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def tile(url: str, layer: str, level: int, col: int, row: int) -> np.ndarray:
    code, body, ctype = get(f"{url}dzi/{layer}_files/{level}/{col}_{row}.png")
    assert code == 200 and ctype == "image/png", (code, body[:200])
    return np.asarray(Image.open(BytesIO(body)))


@pytest.fixture
def served():
    servers = []

    def start(path):
        server, url = viewer.serve(path, port=0)
        servers.append(server)
        return server, url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def box_mean(img: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f boxes (partial boxes at the edges over what is there)."""
    h, w = img.shape[:2]
    out = np.zeros((-(-h // f), -(-w // f), img.shape[2]))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = img[i * f:(i + 1) * f, j * f:(j + 1) * f].reshape(-1, img.shape[2]).mean(0)
    return out


# ---- HTTP: status and tiles --------------------------------------------------------------------------
def test_status_and_tiles_finished_job(tmp_path, served):
    job = tmp_path / "job"
    make_job(job)
    _, url = served(job)
    assert url.startswith("http://127.0.0.1:")

    code, body, ctype = get(url + "api/status")
    s = json.loads(body)
    assert code == 200 and ctype == "application/json"
    assert s["status"] == "done" and s["cursor"] == s["total_tasks"] == 37
    assert s["output_blocks_done"] == s["output_blocks"] == 72 and s["anchor_batches_done"] == 9
    assert s["job"]["steps"] == 2 and s["job"]["batch_rows"] == 2 and s["geometry"]["lr_width"] == LR_W
    assert (s["width"], s["height"]) == (W, H) and s["input"]["path"] == "/data/gradient.png"

    info = json.loads(get(url + "api/info")[1])
    assert info["kind"] == "job" and set(info["layers"]) == {"lr", "output"}
    code, body, _ = get(url)
    assert code == 200 and b"openseadragon.min.js" in body
    code, body, _ = get(url + "static/openseadragon/openseadragon.min.js")
    assert code == 200 and f"openseadragon {OSD_VERSION}".encode() in body[:200]
    assert get(url + "static/openseadragon/images/home_rest.png")[0] == 200
    assert get(url + "static/../viewer.py")[0] == 404

    for layer in ("output", "lr"):
        code, body, _ = get(f"{url}dzi/{layer}.dzi")
        root = ET.fromstring(body)
        size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
        assert code == 200 and root.get("TileSize") == "256" and root.get("Overlap") == "0"
        assert root.get("Format") == "png" and (size.get("Width"), size.get("Height")) == (str(W), str(H))

    full = out_pattern(H, W)
    top = 9  # ceil(log2(360))
    assert np.array_equal(tile(url, "output", top, 0, 0), full[:, :256])
    assert np.array_equal(tile(url, "output", top, 1, 0), full[:, 256:])  # 104 px: the padding is cropped

    lr = torch.from_numpy(lr_pattern().transpose(2, 0, 1)[None] * 2 - 1)
    up = F.interpolate(lr, size=(H, W), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    up8 = np.rint((np.clip(up, -1, 1) + 1) * 127.5)
    got = tile(url, "lr", top, 1, 0).astype(int)
    assert got.shape == (H, W - 256, 3) and np.abs(got - up8[:, 256:]).max() <= 1

    assert np.abs(tile(url, "output", top - 1, 0, 0) - box_mean(full, 2)).max() <= 1  # direct, f = 2
    assert np.abs(tile(url, "output", top - 3, 0, 0) - box_mean(full, 8)).max() <= 2  # from finer tiles
    lr_top = box_mean(up8, 8)
    assert np.abs(tile(url, "lr", top - 3, 0, 0) - lr_top).max() <= 3  # from LR pixels
    assert tile(url, "output", 0, 0, 0).shape == (1, 1, 3)

    assert get(f"{url}dzi/output_files/{top}/2_0.png")[0] == 404
    assert get(f"{url}dzi/output_files/{top + 1}/0_0.png")[0] == 404
    assert get(f"{url}dzi/nope_files/0/0_0.png")[0] == 404
    assert get(f"{url}dzi/output_files/0/0_0.jpeg")[0] == 404


def test_half_finished_job_shows_lr(tmp_path, served):
    """Blocks whose anchor batch is not committed show the LR, even when their chunk is already on disk;
    tiles follow the job as it commits more batches."""
    job = tmp_path / "job"
    make_job(job, done_batches=4, inflight=1)  # rows 0-3 x cols 0-3 and rows 0-1 done; batch 4 written
    _, url = served(job)
    s = json.loads(get(url + "api/status")[1])
    assert s["status"] == "running" and s["anchor_batches_done"] == 4 and s["tiles_version"] == 4
    assert s["output_blocks_done"] == 2 * 12 + 2 * 4 and s["phase"] == "anchor, batch 5/9"

    full = out_pattern(H, W).astype(int)
    iy, ix = np.mgrid[0:H, 0:W]
    lr = lr_expected(iy, ix)
    t = np.concatenate([tile(url, "output", 9, 0, 0), tile(url, "output", 9, 1, 0)], axis=1).astype(int)
    for r in range(6):
        for c in range(12):
            sl = np.s_[r * BS:min((r + 1) * BS, H), c * BS:min((c + 1) * BS, W)]
            want = full[sl] if block_done(r, c, 4) else lr[sl]
            assert np.abs(t[sl] - want).max() <= 1, (r, c)
    coarse = tile(url, "output", 6, 0, 0)  # f = 8: built from finer tiles, cached

    # the job commits the rest: the same tiles now show the output
    finish_job(job)
    assert np.array_equal(tile(url, "output", 9, 0, 0), full[:, :256])
    assert not np.array_equal(tile(url, "output", 6, 0, 0), coarse)
    assert np.abs(tile(url, "output", 6, 0, 0) - box_mean(full, 8)).max() <= 2
    assert json.loads(get(url + "api/status")[1])["tiles_version"] == 9


def test_zarr_and_dzi_paths(tmp_path, served):
    import zarr

    img = out_pattern(100, 300)
    ome = zarr.open_group(tmp_path / "img.ome.zarr", mode="w")
    ome.create_array("s0", data=np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.uint16) * 257, chunks=(3, 64, 64))
    ome.create_array("s1", data=np.zeros((3, 50, 150), dtype=np.uint16), chunks=(3, 64, 64))  # a wrong s1:
    ome.attrs["ome"] = {"version": "0.5", "multiscales": [{  # f = 2 must come from it
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "s0"}, {"path": "s1"}]}]}
    _, url = served(tmp_path / "img.ome.zarr")
    assert json.loads(get(url + "api/info")[1])["layers"] == {"output": "dzi/output.dzi?v=0"}
    assert json.loads(get(url + "api/status")[1])["status"] == "static"
    assert np.array_equal(tile(url, "output", 9, 1, 0), img[:, 256:])
    assert not tile(url, "output", 8, 0, 0).any()

    plain = zarr.create_array(tmp_path / "plain.zarr", data=img, chunks=(50, 50, 3))
    del plain
    _, url = served(tmp_path / "plain.zarr")
    assert np.array_equal(tile(url, "output", 9, 0, 0), img[:, :256])

    (tmp_path / "d_files" / "0").mkdir(parents=True)
    Image.fromarray(img[:1, :1]).save(tmp_path / "d_files" / "0" / "0_0.png")
    (tmp_path / "d.dzi").write_text('<?xml version="1.0"?><Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
                                    'Format="png" Overlap="0" TileSize="256"><Size Width="1" Height="1"/></Image>')
    _, url = served(tmp_path / "d.dzi")
    assert get(url + "dzi/output.dzi")[1] == (tmp_path / "d.dzi").read_bytes()
    assert np.array_equal(tile(url, "output", 0, 0, 0), img[:1, :1])

    with pytest.raises(BadInput):
        viewer.serve(tmp_path / "d_files")


def test_pixel_conversions():
    assert tiles.to_uint8(np.array([0, 257, 65535], dtype=np.uint16)).tolist() == [0, 1, 255]
    assert tiles.to_uint8(np.array([-1.0, 0.0, 1.0]), value_range=(-1, 1)).tolist() == [0, 128, 255]
    grey_alpha = np.array([[[10, 200]]], dtype=np.uint8)
    assert tiles.to_display(grey_alpha).tolist() == [[[10, 10, 10, 200]]]
    assert reduce2(np.full((3, 3, 1), 9, dtype=np.uint8)).shape == (2, 2, 1)


# ---- the page in a real headless Chromium ------------------------------------------------------------------
def chromium_exe() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed: run tools/install_test_deps.sh (as root)"
    return exe


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands
    in on fd 3, replies out on fd 4, NUL-terminated JSON), so the page gets a fixed 1200x700 viewport for
    its whole life and the screenshot is taken once every tile in view is loaded. (`--screenshot` grows
    the viewport from 1200x557 to 1200x700 just before it captures, faster than the page redraws.)"""

    def __init__(self, tmp: Path):
        to_chrome, self.w = os.pipe()
        self.r, from_chrome = os.pipe()
        args = [chromium_exe(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--hide-scrollbars", "--mute-audio", "--force-device-scale-factor=1",
                f"--user-data-dir={tmp / 'profile'}", "--window-size=1200,700", "--remote-debugging-pipe",
                "about:blank"]
        self.log = tmp / "chromium.log"
        trampoline = ("import os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); os.dup2(a, 3); os.dup2(b, 4); "
                      "os.execv(sys.argv[3], sys.argv[3:])")  # puts the pipe ends on fds 3 and 4
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", trampoline, str(to_chrome), str(from_chrome),
                                          *args], pass_fds=(to_chrome, from_chrome), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        os.close(to_chrome)
        os.close(from_chrome)
        self.buf, self.next_id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buf:
                ready, _, _ = select.select([self.r], [], [], max(deadline - time.monotonic(), 0))
                if not ready:
                    raise TimeoutError(f"chromium did not answer {method}; log: {self.log.read_text()[-2000:]}")
                chunk = os.read(self.r, 1 << 20)
                assert chunk, f"chromium closed the pipe; log: {self.log.read_text()[-2000:]}"
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]

    def open(self, url: str, width: int = 1200, height: int = 700) -> None:
        if self.session:
            self.send("Target.closeTarget", {"targetId": self.target})
        self.target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, self.session)
        self.send("Page.navigate", {"url": url}, self.session)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)

    def screenshot(self, path: Path) -> np.ndarray:
        time.sleep(0.3)  # a few frames after the last tile arrived
        data = self.send("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        shot = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert shot.shape == (700, 1200, 3)
        return shot

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (AssertionError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Chromium(tmp_path_factory.mktemp("chromium"))
    yield chrome
    chrome.close()


READY = "window.streamsrView && streamsrView.ready()"


def image_box(shot: np.ndarray, x0: int, x1: int, y0: int = 40, y1: int = 700) -> tuple[float, float, float, float]:
    """Screen box (top, bottom, left, right) of the image inside a pane on a black background."""
    mask = shot[y0:y1, x0:x1].sum(axis=2) > 40
    rows = np.flatnonzero(mask.mean(axis=1) > 0.6)
    assert rows.size, "no image in the pane"
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].mean(axis=0) > 0.6)
    return y0 + rows[0], y0 + rows[-1] + 1, x0 + cols[0], x0 + cols[-1] + 1


def sample(shot, box, iy, ix):
    top, bottom, left, right = box
    sy = int(top + (iy + 0.5) * (bottom - top) / H)
    sx = int(left + (ix + 0.5) * (right - left) / W)
    return sx, shot[sy, sx]


BLOCK_CENTRES = [(min(r * BS + 16, H - 6), min(c * BS + 16, W - 4), r, c) for r in range(6) for c in range(12)]


def shot_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("STREAMSR_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_page_in_chromium(tmp_path, served, browser):
    """Side by side: the LR gradient on the left, the output checkerboard on the right, aligned; then a
    half-finished job with the slider at 25 %: left of it the LR, right of it the output where done and
    the LR elsewhere."""
    job = tmp_path / "job"
    make_job(job)
    _, url = served(job)
    browser.open(url)
    browser.wait_for(READY)
    shot = browser.screenshot(shot_dir(tmp_path) / "viewer_side.png")
    assert browser.evaluate("streamsrView.mode()") == "side"
    lr_box, out_box = image_box(shot, 0, 449), image_box(shot, 451, 900)
    for box in (lr_box, out_box):  # the image fits the 449 px wide pane: 2:1 (360 x 180)
        assert abs((box[3] - box[2]) - 449) <= 3 and abs((box[1] - box[0]) - 224.5) <= 4, box
    assert abs(lr_box[0] - out_box[0]) <= 1 and abs(lr_box[1] - out_box[1]) <= 1  # same zoom
    for iy, ix, r, c in BLOCK_CENTRES:
        _, px = sample(shot, out_box, iy, ix)
        assert np.abs(px - COLORS[(r + c) % 2]).max() <= 30, ("output", r, c, px)
        _, px = sample(shot, lr_box, iy, ix)
        assert np.abs(px - lr_expected(iy, ix)).max() <= 14, ("lr", r, c, px, lr_expected(iy, ix))
    panel = shot[60:690, 905:1195]  # the job panel is drawn (text on a dark background)
    assert (panel.sum(axis=2) > 400).sum() > 500

    half = tmp_path / "half"
    make_job(half, done_batches=4, inflight=1)
    _, url = served(half)
    browser.open(url + "?mode=slider&split=0.25")
    browser.wait_for(READY)
    shot = browser.screenshot(shot_dir(tmp_path) / "viewer_slider_half.png")
    box = image_box(shot, 0, 900)
    assert abs((box[3] - box[2]) - 900) <= 3 and abs((box[1] - box[0]) - 450) <= 4, box
    split_x = 900 * 0.25
    checked = {"lr": 0, "out": 0, "pending": 0}
    for iy, ix, r, c in BLOCK_CENTRES:
        sx, px = sample(shot, box, iy, ix)
        if abs(sx - split_x) < 16:
            continue
        if sx < split_x or not block_done(r, c, 4):
            assert np.abs(px - lr_expected(iy, ix)).max() <= 14, (r, c, sx, px)
            checked["lr" if sx < split_x else "pending"] += 1
        else:
            assert np.abs(px - COLORS[(r + c) % 2]).max() <= 30, (r, c, sx, px)
            checked["out"] += 1
    assert min(checked.values()) >= 10, checked


def test_page_follows_running_job(tmp_path, served, browser):
    """The page polls the status; when more output blocks are committed it reloads the output tiles.
    The job finishes while the page is open (at the page's second status poll)."""
    half = tmp_path / "half"
    make_job(half, done_batches=4, inflight=1)
    server, url = served(half)
    status, calls = server.view.status, []

    def status_then_finish():
        calls.append(time.monotonic())
        if len(calls) == 2:
            finish_job(half)
        return status()

    server.view.status = status_then_finish
    browser.open(url + "?mode=side&poll=500")
    browser.wait_for(READY + " && streamsrView.version() === 9")
    assert len(calls) >= 2

    def wrong_blocks(shot: np.ndarray) -> list:
        out_box = image_box(shot, 451, 900)
        return [(r, c, px) for iy, ix, r, c in BLOCK_CENTRES
                if np.abs((px := sample(shot, out_box, iy, ix)[1]) - COLORS[(r + c) % 2]).max() > 30]

    # the reloaded tiles arrive asynchronously after the version bump: look again for a few seconds
    deadline = time.monotonic() + 15
    while True:
        shot = browser.screenshot(shot_dir(tmp_path) / "viewer_refreshed.png")
        wrong = wrong_blocks(shot)
        if not wrong or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not wrong, ("output blocks not refreshed", wrong)
    panel = shot[60:690, 905:1195]
    assert (np.abs(panel - (46, 139, 87)).sum(axis=2) < 10).sum() > 200  # the green "done" badge


def lr_coords(px: np.ndarray) -> tuple[float, float]:
    """Invert the LR gradient: output pixel (iy, ix) shown by an LR-coloured screen pixel."""
    return (px[1] / 255 * (LR_H - 1) + 0.5) * 4 - 0.5, (px[0] / 255 * (LR_W - 1) + 0.5) * 4 - 0.5


def check_aligned(lr_shot: np.ndarray, out_shot: np.ndarray, lr_x0: int, out_x0: int, width: int) -> int:
    """Screen pixels at the same place in the LR and output views show the same image point: the LR
    colour gives the point, the output checkerboard colour there must match. Returns the points checked."""
    n = 0
    for y in range(50, 690, 16):
        for x in range(8, width - 8, 16):
            lr_px, out_px = lr_shot[y, lr_x0 + x], out_shot[y, out_x0 + x]
            if abs(lr_px[2] - LR_BLUE * 255) > 8 or out_px[2] > 80:  # background, label or split handle
                continue
            iy, ix = lr_coords(lr_px)
            if min(iy % BS, -iy % BS, ix % BS, -ix % BS) < 4 or not (4 < ix < W - 4 and 4 < iy < H - 4):
                continue  # too close to a block edge to tell (the LR colour is quantised)
            want = COLORS[(int(iy) // BS + int(ix) // BS) % 2]
            assert np.abs(out_px - want).max() <= 30, (x, y, iy, ix, out_px)
            n += 1
    return n


def test_zoom_pan_and_modes_stay_in_sync(tmp_path, served, browser):
    """Wheel-zoom on the LR, drag the output: both views follow; then the slider mode shows the same
    place of both images at the same screen pixel."""
    job = tmp_path / "job"
    make_job(job)
    _, url = served(job)
    browser.open(url)
    browser.wait_for(READY)
    mouse = lambda kind, x, y, **kw: browser.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **kw},
                                                  browser.session)
    for _ in range(4):
        mouse("mouseWheel", 150, 300, deltaX=0, deltaY=-120)
    mouse("mouseMoved", 700, 420)
    mouse("mousePressed", 700, 420, button="left", buttons=1, clickCount=1)
    for step in range(1, 6):
        mouse("mouseMoved", 700 - 12 * step, 420 - 6 * step, button="left", buttons=1)
    mouse("mouseReleased", 640, 390, button="left", buttons=0, clickCount=1)
    browser.wait_for(READY)
    lr_zoom, out_zoom = browser.evaluate("streamsrView.zoom()")
    assert lr_zoom > 1.3 and abs(lr_zoom / out_zoom - 1) < 1e-6  # OSD may merge close wheel events
    shot = browser.screenshot(shot_dir(tmp_path) / "viewer_zoomed.png")
    assert check_aligned(shot, shot, 0, 450, 449) > 100

    mouse("mousePressed", 1042, 20, button="left", buttons=1, clickCount=1)  # the "Slider" button
    mouse("mouseReleased", 1042, 20, button="left", buttons=0, clickCount=1)
    browser.wait_for(READY + " && streamsrView.mode() === 'slider'")
    time.sleep(0.3)  # the resize settles (the views keep the zoom and the point in the centre)
    browser.wait_for(READY)
    mouse("mouseMoved", 450, 370)  # drag the slider's grip from the middle to 300 px
    mouse("mousePressed", 450, 370, button="left", buttons=1, clickCount=1)
    for x in (420, 380, 340, 300):
        mouse("mouseMoved", x, 372, button="left", buttons=1)
    mouse("mouseReleased", 300, 372, button="left", buttons=0, clickCount=1)
    assert abs(browser.evaluate("streamsrView.split()") - 300 / 900) < 0.01
    browser.evaluate("streamsrView.setSplit(1)")
    lr_only = browser.screenshot(tmp_path / "slider_lr.png")
    browser.evaluate("streamsrView.setSplit(0)")
    out_only = browser.screenshot(tmp_path / "slider_out.png")
    assert check_aligned(lr_only, out_only, 0, 0, 900) > 200


def test_foreign_host_header_is_refused(tmp_path, served):
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1 sends its own Host."""
    import http.client

    make_job(tmp_path / "job")
    server, url = served(tmp_path / "job")
    port = server.server_address[1]

    def status_with(host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", urlsplit(url).path + "api/status", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status

    assert status_with(f"127.0.0.1:{port}") == 200 and status_with(f"localhost:{port}") == 200
    for host in ("evil.example:%d" % port, "127.0.0.1", f"localhost:{port + 1}", "attacker.test"):
        assert status_with(host) == 403, host


def test_every_url_needs_the_runs_token(tmp_path, served):
    """Another local user, or a page that found the port, reads nothing without the printed URL's token."""
    import http.client

    make_job(tmp_path / "job")
    server, url = served(tmp_path / "job")
    parts = urlsplit(url)
    token = parts.path.strip("/")
    assert len(token) >= 32 and parts.path == f"/{token}/"
    _, other = served(tmp_path / "job")
    assert urlsplit(other).path != parts.path  # a token per run
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    for path in ("", "api/status", "api/info", "static/viewer.js", "dzi/output.dzi", "dzi/output_files/0/0_0.png",
                 f"{token[:-1]}/api/status", f"{token}x/api/status", f"x{token}/api/status", f"api/{token}/status"):
        assert get(base + path)[0] == 403, path
    assert get(url + "api/status")[0] == 200 and get(url + "dzi/output.dzi")[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.request("GET", f"/{token}")
    response = conn.getresponse()
    assert response.status == 301 and response.getheader("Location") == f"/{token}/"
    conn.close()


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_port_out_of_range_is_one_line(tmp_path, capsys, port):
    from streamsr.cli import main

    make_job(tmp_path / "job")
    assert main(["view", str(tmp_path / "job"), "--port", port]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--port" in err[0]
