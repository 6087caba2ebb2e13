"""Video files in a search index (issue 21): ``cl2cm-index --videos`` and videos among ``--images``,
with tiny H.264 clips written by PyAV in milliseconds and a tiny random backbone checkpoint.

Every good clip is found first by its own file; broken, empty, truncated, zero-frame, audio-only and
too-long files are skipped with their reason and never stop the build; a still image is indexed
beside videos by ``--images`` (embedded exactly as in a pictures-only index) and refused by
``--videos``; a file without an extension is recognised by its container; a build stopped midway
resumes from its shards to the uninterrupted index; a rerun encodes nothing, and a new frame count
re-encodes the videos only.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, backbone_config, build_wordpiece_tokenizer, features_config

pytest.importorskip("av", reason="PyAV is not installed (pip install 'cl2cm-hf[video]')")

sys.path.insert(0, str(Path(__file__).parent / "search"))
from videos import clip_frames, write_audio_only, write_video, write_zero_frames

from cl2cm_hf import CL2CMCrossModalModel, build_processor
from cl2cm_hf.cli.index import main as index_main
from cl2cm_hf.cli.search import main as search_main
from cl2cm_hf.inference import embed_visual
from cl2cm_hf.search import SearchIndex, build_index
from cl2cm_hf.search.decode_video import BadVideo, VideoSettings, open_video

pytestmark = pytest.mark.slow  # builds indexes with a DataLoader worker process: not in `make test-fast`
SMALL = {"batch_size": 3, "chunk_size": 3, "num_workers": 0, "progress": False, "faiss": "none", "query_encoder": False}
GOOD = ["clip0.mp4", "clip1.mp4", "clip2.mp4", "clip3.webm", "sub/clip4.mp4", "noext"]
BROKEN = {"audio.mp4": "no video stream (audio only)", "zero.mp4": "no video stream", "empty.mp4": "empty file",
          "cut.mp4": "truncated", "notes.mp4": "not a video", "long.mp4": "too long",
          "notes.txt": "not an image or a video"}  # FFmpeg would read the text as "tty" video


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_search")
    torch.manual_seed(0)
    from transformers import ViTImageProcessorPil

    CL2CMCrossModalModel(backbone_config()).save_pretrained(root / "model")
    processor = build_processor(build_wordpiece_tokenizer(["rot", "hund", "rouge", "chien"]),
                                image_processor=ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}))
    processor.save_pretrained(root / "model")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    for i, name in enumerate(GOOD):
        write_video(videos / name, clip_frames(i, frames=6 + 2 * i), codec="libvpx-vp9" if name.endswith(".webm") else "libx264")
    write_audio_only(videos / "audio.mp4")
    write_zero_frames(videos / "zero.mp4")
    (videos / "empty.mp4").write_bytes(b"")
    whole = write_video(root / "whole.mp4", clip_frames(9, frames=24), faststart=True).read_bytes()
    (videos / "cut.mp4").write_bytes(whole[: len(whole) * 2 // 3])  # the header promises 24 frames
    (videos / "notes.mp4").write_text("not a video at all\n" * 20)
    (videos / "notes.txt").write_text("some notes beside the clips\n" * 20)
    write_video(videos / "long.mp4", clip_frames(8, frames=40))  # 5 s, over the limit the tests set
    from PIL import Image

    Image.fromarray(clip_frames(5)[0]).save(videos / "still.png")
    return root


def _reasons(report) -> dict[str, str]:
    return {entry["id"]: entry["reason"] for entry in report.skipped}


def test_videos_indexed_bad_files_skipped_with_their_reason(world):
    report = build_index(world / "model", world / "mixed", images=world / "videos", max_video_seconds=4.0, **SMALL)
    reasons = _reasons(report)
    assert sorted(reasons) == sorted(BROKEN), reasons
    for name, reason in BROKEN.items():
        assert reason in reasons[name], (name, reasons[name])
    index = SearchIndex.load(world / "mixed")
    assert sorted(index.ids) == sorted([*GOOD, "still.png"])
    assert index.metadata["video"] == {"num_frames": 8, "max_seconds": 4.0, "videos_only": False}
    for name in GOOD:  # each clip is its own best match, decoded again from its file
        hits = index.search_video(str(world / "videos" / name), top_k=3)
        assert hits[0].id == name and hits[0].score == pytest.approx(1.0, abs=1e-5), (name, hits)
        assert index.search_item(name, top_k=1)[0].id == name
    # The checkpoint's own video processor, given the file, makes the embedding the index holds.
    path = world / "videos" / "clip2.mp4"
    with torch.no_grad():
        own = embed_visual(index.model, **index.processor(videos=[str(path)], return_tensors="pt"))[0].numpy()
    np.testing.assert_allclose(own, index.embeddings[index.ids.index("clip2.mp4")], atol=1e-5)


def test_a_still_image_beside_videos_is_embedded_as_a_picture(world, tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "still.png").write_bytes((world / "videos" / "still.png").read_bytes())
    build_index(world / "model", tmp_path / "pictures_index", images=tmp_path / "pictures", **SMALL)
    alone = SearchIndex.load(tmp_path / "pictures_index", use_faiss=False)
    build_index(world / "model", tmp_path / "mixed", images=world / "videos", max_video_seconds=4.0, **SMALL)
    mixed = SearchIndex.load(tmp_path / "mixed", use_faiss=False)
    np.testing.assert_allclose(mixed.embeddings[mixed.ids.index("still.png")], alone.embeddings[0], atol=1e-6)


def test_videos_only_refuses_a_still_image_and_decodes_in_a_worker(world, tmp_path, capsys):
    code = index_main([str(world / "model"), "--videos", str(world / "videos"), "--out", str(tmp_path / "index"),
                       "--max-video-seconds", "4", "--num-workers", "1", "--batch-size", "4", "--faiss", "none",
                       "--no-progress", "--no-query-encoder"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "still.png: a still image, not a video" in out and "audio.mp4: no video stream (audio only)" in out
    report = json.loads((tmp_path / "index" / "report.json").read_text())
    assert {entry["id"] for entry in report["skipped"]} == {*BROKEN, "still.png"}
    assert sorted(SearchIndex.load(tmp_path / "index").ids) == sorted(GOOD)
    assert search_main([str(tmp_path / "index"), "ein roter Hund", "--top", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and all(Path(hit["path"]).name in {Path(g).name for g in GOOD} for hit in hits)
    for query in (["--video", str(world / "videos" / "clip1.mp4")], ["--like", "clip1.mp4"]):
        assert search_main([str(tmp_path / "index"), *query, "--top", "2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == "clip1.mp4"
    assert search_main([str(tmp_path / "index"), "--like", "nothing.mp4"]) == 2
    assert "has no item 'nothing.mp4'" in capsys.readouterr().err


def test_rerun_reuses_and_a_new_frame_count_reencodes_the_videos_only(world, tmp_path):
    build = {"images": world / "videos", "max_video_seconds": 4.0, **SMALL}
    first = build_index(world / "model", tmp_path / "index", **build)
    again = build_index(world / "model", tmp_path / "index", **build)
    assert (again.encoded, again.reused) == (0, first.count + len(first.skipped))
    fewer = build_index(world / "model", tmp_path / "index", num_frames=2, **build)
    # Every file that may be a video is tried again (the broken ones too); the picture is reused.
    assert fewer.encoded == len(GOOD) and fewer.reused == 1, fewer.summary()
    assert SearchIndex.load(tmp_path / "index").metadata["video"]["num_frames"] == 2


def test_a_feature_model_cannot_decode_videos_and_says_so(world, tmp_path):
    torch.manual_seed(0)
    CL2CMCrossModalModel(features_config()).save_pretrained(tmp_path / "features_model")
    build_processor(build_wordpiece_tokenizer()).save_pretrained(tmp_path / "features_model")
    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "a.mp4", clip_frames(0))
    report = build_index(tmp_path / "features_model", tmp_path / "index", videos=tmp_path / "clips", **SMALL)
    assert report.count == 0 and "reads precomputed visual features" in report.skipped[0]["reason"], report.skipped


def test_sampling_is_uniform_and_short_clips_give_every_frame(tmp_path):
    frames = clip_frames(3, frames=12)  # the square moves 2 px a frame: 12 different frames
    path = write_video(tmp_path / "a.mp4", frames)
    sampled = open_video(path, VideoSettings(num_frames=4))
    assert sampled.shape == (4, 24, 32, 3)
    # H.264 is lossy: each sampled frame is matched to the nearest source frame
    nearest = [int(np.argmin(((frames.astype(float) - f.astype(float)) ** 2).mean(axis=(1, 2, 3)))) for f in sampled]
    assert nearest == [0, 3, 6, 9]
    assert open_video(path, VideoSettings(num_frames=64)).shape[0] == 12
    with pytest.raises(BadVideo, match="too long"):
        open_video(path, VideoSettings(max_seconds=1.0))


def test_a_build_stopped_midway_resumes_from_its_shards(world, tmp_path, monkeypatch):
    from cl2cm_hf.search import encode

    build = {"images": world / "videos", "max_video_seconds": 4.0, **SMALL}
    whole = build_index(world / "model", tmp_path / "whole", **build)
    calls, forward = [], encode.embed_visual

    def stops_at_the_third_batch(model, **inputs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return forward(model, **inputs)

    monkeypatch.setattr(encode, "embed_visual", stops_at_the_third_batch)
    with pytest.raises(RuntimeError, match="killed"):
        build_index(world / "model", tmp_path / "index", **build)
    assert len(list((tmp_path / "index" / "shards").glob("*.safetensors"))) >= 1
    monkeypatch.setattr(encode, "embed_visual", forward)
    resumed = build_index(world / "model", tmp_path / "index", **build)
    assert 0 < resumed.reused and resumed.encoded < whole.encoded, resumed.summary()
    a, b = SearchIndex.load(tmp_path / "whole", use_faiss=False), SearchIndex.load(tmp_path / "index", use_faiss=False)
    assert a.ids == b.ids and _reasons(whole) == _reasons(resumed)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)
