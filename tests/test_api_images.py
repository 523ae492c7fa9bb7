"""Images in, images out: upscale_image on PIL, numpy and path inputs, and the diffusers-style pipeline,
each equal to the CLI's pixels on the same settings; the progress callback sees every task."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from test_job import pixels, run_cli, work  # noqa: F401  (the tiny model and input fixture)

import streamsr


def test_upscale_image_equals_the_cli_on_pil_numpy_and_path(work, tmp_path):  # noqa: F811
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "cli.png", "--model", work / "model",
                   "--steps", 2, "--seed", 3, "-q") == 0
    expect = pixels(tmp_path / "cli.png")
    seen = []
    pil = Image.open(work / "in.png")
    for image in (pil, np.asarray(pil), work / "in.png"):
        out = streamsr.upscale_image(image, model=work / "model", steps=2, seed=3,
                                     callback=lambda done, total, label: seen.append((done, total)))
        assert isinstance(out, Image.Image) and out.size == (108, 80)
        np.testing.assert_array_equal(np.asarray(out), expect)
    total = seen[0][1]
    assert seen[-1] == (total, total) and [d for d, _ in seen[:total]] == list(range(1, total + 1))
    path = streamsr.upscale_image(work / "in.png", model=work / "model", steps=2, seed=3,
                                  output=tmp_path / "api.webp")
    assert path == tmp_path / "api.webp" and Image.open(path).size == (108, 80)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.webp", "cli.png"]  # no job dir left


def test_pipeline_equals_the_cli(work, tmp_path):  # noqa: F811
    assert run_cli("upscale", work / "in.png", "-o", tmp_path / "cli.png", "--model", work / "model",
                   "--steps", 1, "--seed", 7, "-q") == 0
    pipe = streamsr.StreamSRPipeline.from_pretrained(work / "model").to("cpu")
    out = pipe(image=Image.open(work / "in.png"), num_inference_steps=1,
               generator=torch.Generator().manual_seed(7), show_progress=False)
    np.testing.assert_array_equal(np.asarray(out), pixels(tmp_path / "cli.png"))
    arr = pipe(image=work / "in.png", num_inference_steps=1, generator=torch.Generator().manual_seed(7),
               output_type="np", show_progress=False)
    assert arr.dtype == np.float32 and arr.shape == (80, 108, 3)
    np.testing.assert_allclose(arr * 255, pixels(tmp_path / "cli.png"), atol=1e-3)
