"""The demo world's videos as .mp4 files (cl2cm_hf/data/demo_video_files.py) and
trainer/configs/demo_video_pixels.yaml: both stages trained from the files through the video processor,
shrunk to a few items and steps."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

from transformers import AutoProcessor
from transformers.video_utils import load_video

from cl2cm_hf.data import ImagePathStore
from cl2cm_hf.data.demo_video_files import render_video_files
from cl2cm_hf.data.demo_world import build_demo_world
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.evaluation.records import flat_metrics
from cl2cm_hf.training.recipe import load_config, parse_config

pytestmark = pytest.mark.slow  # trains: not in `make test-fast`

RECIPE = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "demo_video_pixels.yaml"
SHRUNK = [
    "--demo_items", "24", "--demo_validation_items", "6", "--demo_test_items", "6", "--num_train_epochs", "1",
    "--cl_num_train_epochs", "1", "--per_device_train_batch_size", "16", "--text_hidden_size", "32",
    "--text_num_heads", "2", "--projection_dim", "16", "--tokenizer_vocab_size", "300", "--ot_iterations", "5",
    "--logging_steps", "1", "--report_to", "none", "--query", "null",
]


def _world(seed: int = 3):
    return build_demo_world(seed=seed, num_items=4, val_items=1, test_items=1, visual_kind="video")


def test_two_renders_are_byte_identical_and_decode_to_the_drawn_frames(tmp_path):
    world = _world()
    first, second = render_video_files(world, tmp_path / "a", size=32), render_video_files(world, tmp_path / "b", size=32)
    assert len(first) == 6 and all(first[i].read_bytes() == second[i].read_bytes() for i in first)
    other = render_video_files(_world(seed=4), tmp_path / "c", size=32)
    assert {p.read_bytes() for p in other.values()}.isdisjoint({p.read_bytes() for p in first.values()})
    visual_id, drawn = next(world.pictures(size=32))
    decoded, metadata = load_video(str(first[visual_id]), backend="pyav")
    assert metadata.total_num_frames == len(drawn) and decoded.shape == (len(drawn), 32, 32, 3)
    # H.264 yuv420p: colours rounded and chroma halved at edges; the frames stay the drawn ones.
    error = np.abs(decoded.astype(int) - np.stack([np.asarray(frame) for frame in drawn]).astype(int))
    assert error.mean() < 6
    # A folder rendered from the same world is reused, not rewritten.
    stamp = first[visual_id].stat().st_mtime_ns
    render_video_files(world, tmp_path / "a", size=32)
    assert first[visual_id].stat().st_mtime_ns == stamp


def test_image_worlds_and_mixed_stores_are_refused(tmp_path):
    image_world = build_demo_world(seed=3, num_items=4, val_items=1, test_items=1, visual_kind="image")
    with pytest.raises(CL2CMError, match="visual_kind"):
        render_video_files(image_world, tmp_path / "v")
    with pytest.raises(CL2CMError, match="mixes video files"):
        ImagePathStore({"a": tmp_path / "a.mp4", "b": tmp_path / "b.png"})


def test_recipe_reads_mp4_files_through_the_video_processor():
    model_args, data_args, _, _ = parse_config(load_config(RECIPE))
    assert data_args.demo_pixels and data_args.demo_video_files and data_args.demo_visual_kind == "video"
    assert model_args.visual_encoder_type == "backbone" and data_args.video_num_frames <= model_args.visual_max_frames


def test_shrunk_recipe_trains_both_stages_from_mp4_files(tmp_path):
    from cl2cm_hf.training.run import train

    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        records = train([str(RECIPE), "--output_dir", str(out), *SHRUNK])
    assert {"de_sumr", "fr_sumr"} <= set(flat_metrics(records))
    assert (out / "cross_lingual" / "config.json").is_file()
    rendered = out / "demo_pictures" / "video_seed42_48px_mp4"
    assert len(list(rendered.glob("*.mp4"))) == 36
    final = out / "cross_modal"
    video = json.loads((final / "processor_config.json").read_text())["video_processor"]
    assert video["num_frames"] == load_config(RECIPE)["video_num_frames"]
    gallery = ImagePathStore.load(final / "test_gallery")
    assert gallery.is_video and all(gallery.paths(i)[0].suffix == ".mp4" for i in gallery.ids)
    processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    inputs = processor(videos=[str(gallery.paths(i)[0]) for i in gallery.ids[:2]])
    assert inputs["pixel_values"].shape[:2] == inputs["visual_mask"].shape and inputs["pixel_values"].shape[0] == 2
    assert "video" in (final / "README.md").read_text()
