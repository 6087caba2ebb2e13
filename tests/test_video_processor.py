"""The video processor of pixel checkpoints (cl2cm_hf/video_processing_cl2cm.py): frame sampling,
.mp4 decoding through transformers' load_video (PyAV), frames prepared exactly as the matching image
processor prepares images, saving and loading through AutoVideoProcessor / AutoProcessor, a model
encoding a decoded file, and errors naming the bad file. Videos are written here, a few 16 px frames each."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

from conftest import IMAGE_SIZE, PROJECTION_DIM, backbone_config, build_wordpiece_tokenizer
from transformers import AutoModel, AutoProcessor, CLIPImageProcessorPil, ConvNextImageProcessorPil, ViTImageProcessorPil
from transformers.models.auto.video_processing_auto import AutoVideoProcessor
from transformers.video_utils import VideoMetadata

from cl2cm_hf import CL2CMCrossModalModel, CL2CMVideoProcessor, build_processor, video_processor_for
from cl2cm_hf.data.demo_video_files import write_mp4
from cl2cm_hf.errors import CL2CMError

STEP = 12  # frame t is a flat grey of value STEP * t: which frames were kept shows in the pixels


def _video(path, frames: int):
    return write_mp4(path, [np.full((IMAGE_SIZE, IMAGE_SIZE, 3), STEP * t, np.uint8) for t in range(frames)], fps=10)


def _raw(**kwargs) -> CL2CMVideoProcessor:
    """Pixels left as decoded (no rescale, no normalisation) so frame values can be read back."""
    return CL2CMVideoProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_rescale=False, do_normalize=False, **kwargs)


def _processor(num_frames: int = 3):
    image_processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return build_processor(build_wordpiece_tokenizer(), "query: ", image_processor, video_processor_for(image_processor, num_frames))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {"long": _video(root / "long.mp4", 20), "short": _video(root / "short.mp4", 2)}


@pytest.mark.parametrize(
    ("settings", "total", "fps", "expected"),
    [
        ({"num_frames": 4}, 20, 10.0, [0, 5, 10, 15]),  # uniform
        ({"num_frames": 8}, 3, 10.0, [0, 1, 2]),  # shorter than num_frames: every frame
        ({"num_frames": 8, "fps": 2.0}, 20, 10.0, [0, 5, 10, 15]),  # 2 s at 2 fps: 4 frames
        ({"num_frames": 3, "fps": 2.0}, 20, 10.0, [0, 6, 13]),  # fps, at most num_frames
    ],
)
def test_uniform_and_fps_sampling_pick_the_expected_frames(settings, total, fps, expected):
    indices = _raw(**settings).sample_frames(VideoMetadata(total_num_frames=total, fps=fps))
    assert indices.tolist() == expected


def test_fps_sampling_needs_a_frame_rate_and_frames():
    with pytest.raises(CL2CMError, match="no frame rate"):
        _raw(fps=2.0).sample_frames(VideoMetadata(total_num_frames=10, fps=None))
    with pytest.raises(CL2CMError, match="no video frames"):
        _raw().sample_frames(VideoMetadata(total_num_frames=0, fps=10.0))
    with pytest.raises(CL2CMError, match="fps"):
        CL2CMVideoProcessor(fps=-1)


def test_decoded_file_keeps_the_sampled_frames_and_pads_short_videos(videos):
    out = _raw(num_frames=4)(videos=[str(videos["long"]), str(videos["short"])], return_metadata=True)
    assert out["pixel_values"].shape == (2, 4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out["visual_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["video_metadata"][0].frames_indices.tolist() == [0, 5, 10, 15]
    grey = out["pixel_values"].mean(dim=(2, 3, 4))
    torch.testing.assert_close(grey[0], torch.tensor([0.0, 60.0, 120.0, 180.0]), atol=3, rtol=0)  # codec rounding
    torch.testing.assert_close(grey[1, :2], torch.tensor([0.0, 12.0]), atol=3, rtol=0)
    assert not out["pixel_values"][1, 2:].any()  # padding frames are zeros
    fps = _raw(num_frames=8, fps=2.0)(videos=str(videos["long"]), return_metadata=True)
    assert fps["video_metadata"][0].frames_indices.tolist() == [0, 5, 10, 15]


@pytest.mark.parametrize(
    "image_processor",
    [
        ConvNextImageProcessorPil(size={"shortest_edge": 24}),  # resize to 24 / crop_pct, then a centre crop
        ViTImageProcessorPil(size={"height": 16, "width": 16}),
        CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
    ],
    ids=["convnext", "vit", "clip"],
)
def test_frames_are_prepared_exactly_as_images(image_processor):
    frames = list(np.random.default_rng(0).integers(0, 256, (3, 20, 28, 3), dtype=np.uint8))
    images = image_processor(images=frames, return_tensors="pt")["pixel_values"]
    video = video_processor_for(image_processor)(videos=[frames], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(images, video)


def test_round_trip_through_auto_video_processor_and_auto_processor(tmp_path, videos):
    processor = _processor(num_frames=3)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())["video_processor"]
    assert saved["num_frames"] == 3 and saved["auto_map"]["AutoVideoProcessor"] == "video_processing_cl2cm.CL2CMVideoProcessor"
    assert (tmp_path / "video_processing_cl2cm.py").is_file()
    loaded = AutoVideoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    want = {k: v for k, v in processor.video_processor.to_dict().items() if k != "auto_map"}
    for got in (loaded, loaded_processor.video_processor):
        assert {k: v for k, v in got.to_dict().items() if k != "auto_map"} == want
    expected = processor(videos=str(videos["long"]))
    got = loaded_processor(text=["ein Hund"], videos=str(videos["long"]))
    assert torch.equal(got["pixel_values"], expected["pixel_values"]) and got["pixel_values"].shape[1] == 3
    # The video processor alone: its own video_preprocessor_config.json.
    processor.video_processor.save_pretrained(tmp_path / "alone")
    assert json.loads((tmp_path / "alone" / "video_preprocessor_config.json").read_text())["num_frames"] == 3
    assert AutoVideoProcessor.from_pretrained(tmp_path / "alone", trust_remote_code=True).num_frames == 3


def test_older_processor_without_video_processor_keeps_every_frame(tmp_path):
    _processor().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    del config["video_processor"]
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    frames = [np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)] * 5
    assert loaded.video_processor.do_sample_frames is False
    assert loaded(videos=[frames])["pixel_values"].shape[:2] == (1, 5)


def test_checkpoint_processor_reads_an_mp4_and_the_model_encodes_it(tmp_path, videos):
    torch.manual_seed(0)
    CL2CMCrossModalModel(backbone_config()).save_pretrained(tmp_path)
    _processor(num_frames=4).save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    inputs = processor(videos=[str(videos["long"]), str(videos["short"])])
    assert inputs["visual_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    with torch.no_grad():
        embeddings = model.get_video_features(**inputs).pooler_output
    assert embeddings.shape == (2, PROJECTION_DIM) and torch.isfinite(embeddings).all()
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_bad_files_raise_errors_naming_the_file(tmp_path, videos):
    import av

    empty, junk, silent = tmp_path / "empty.mp4", tmp_path / "junk.mp4", tmp_path / "no_frames.mp4"
    empty.write_bytes(b"")
    junk.write_bytes(b"not a video at all" * 10)
    with av.open(str(silent), "w", format="mp4") as container:  # a video stream that never got a frame
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = IMAGE_SIZE
        container.start_encoding()
        container.mux(stream.encode())
    processor = _processor()
    for bad in (empty, junk, silent):
        with pytest.raises(CL2CMError, match=str(bad)):
            processor(videos=[str(videos["long"]), str(bad)])
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        processor(videos=str(tmp_path / "missing.mp4"))
    with pytest.raises(CL2CMError, match="video 1 has no frames"):
        processor.video_processor(videos=[[np.zeros((4, 4, 3), np.uint8)], []])
