"""Visual feature stores (npy, safetensors, in memory; images and frame sequences) and image paths."""

import numpy as np
import pytest
import torch

from cl2cm_hf.data import ImagePathStore, MissingVisualIdError, NonFiniteFeatureError, VisualFeatureStore

IDS = ["a", "b", "c", "d"]


def video_array():
    array = np.random.default_rng(0).standard_normal((4, 5, 3)).astype(np.float32)
    lengths = np.array([5, 2, 3, 1])
    return array, lengths


def test_image_store_lookup_and_properties():
    array = np.arange(12, dtype=np.float16).reshape(4, 3)
    store = VisualFeatureStore.from_arrays(IDS, array)
    features, mask = store.lookup(["c", "a"])
    assert mask is None and features.dtype == torch.float32
    assert features.tolist() == [[6, 7, 8], [0, 1, 2]]
    assert store.feature_dim == 3 and not store.is_video and len(store) == 4 and "b" in store and "z" not in store
    assert store.ids == IDS


def test_video_store_masks_and_padding():
    array, lengths = video_array()
    array[1, 2:] = np.nan  # padding frames may hold anything: never read, never reported
    store = VisualFeatureStore.from_arrays(IDS, array, lengths)
    features, mask = store.lookup(["b", "c"])
    assert features.shape == (2, 3, 3) and mask.dtype == torch.long  # T = longest item of the batch
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert features[0, 2].abs().sum() == 0 and torch.allclose(features[1], torch.from_numpy(array[2, :3]))
    assert store.is_video and store.max_frames == 5 and store.lookup(["a"])[0].shape == (1, 5, 3)


def test_npy_memmap_and_safetensors_round_trip(tmp_path):
    array, lengths = video_array()
    np.save(tmp_path / "video.npy", array)
    (tmp_path / "ids.txt").write_text("\n".join(IDS))
    from_npy = VisualFeatureStore.from_npy(tmp_path / "video.npy", tmp_path / "ids.txt", lengths)
    assert isinstance(from_npy._array, np.memmap)
    folder = from_npy.save(tmp_path / "store")
    assert sorted(p.name for p in folder.iterdir()) == ["features.safetensors", "ids.json"]  # no temp files left
    for loaded in (VisualFeatureStore.load(folder), VisualFeatureStore.load(folder / "features.safetensors", mmap=False)):
        assert loaded.ids == IDS and loaded.lengths.tolist() == lengths.tolist()
        for got, want in zip(loaded.lookup(["d", "a"]), from_npy.lookup(["d", "a"])):
            assert torch.equal(got, want)
    images = VisualFeatureStore.from_arrays(IDS, array[:, 0]).save(tmp_path / "images")
    assert VisualFeatureStore.load(images).lookup(["b"])[0].shape == (1, 3)


def test_missing_visual_id_names_id_and_store(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 2), dtype=np.float32))
    store = VisualFeatureStore.from_npy(tmp_path / "f.npy", IDS)
    with pytest.raises(KeyError) as error:
        store.lookup(["a", "nope"])
    assert isinstance(error.value, MissingVisualIdError)
    assert str(error.value) == f"visual_id 'nope' is not in feature store {tmp_path / 'f.npy'} (4 items)"


def test_non_finite_rows_rejected_eagerly_in_memory():
    array = np.zeros((4, 2), dtype=np.float32)
    array[2, 1] = np.inf
    with pytest.raises(NonFiniteFeatureError, match=r"visual_id 'c' \(row 2\) contain NaN or Inf"):
        VisualFeatureStore.from_arrays(IDS, array)


def test_non_finite_rows_in_memmap_caught_on_lookup_and_validate(tmp_path):
    array = np.zeros((4, 2), dtype=np.float32)
    array[3, 0] = np.nan
    np.save(tmp_path / "f.npy", array)
    store = VisualFeatureStore.from_npy(tmp_path / "f.npy", IDS)  # lazy: building reads nothing
    assert store.lookup(["a", "b"])[0].shape == (2, 2)
    with pytest.raises(NonFiniteFeatureError, match=r"f\.npy: features of visual_id 'd' \(row 3\)"):
        store.lookup(["a", "d"])
    with pytest.raises(NonFiniteFeatureError, match="'d'"):
        VisualFeatureStore.from_npy(tmp_path / "f.npy", IDS).validate()


def test_bad_construction_messages():
    with pytest.raises(ValueError, match=r"duplicate visual id 'a' at rows 0 and 2"):
        VisualFeatureStore.from_arrays(["a", "b", "a"], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="3 ids but 4 feature rows"):
        VisualFeatureStore.from_arrays(IDS[:3], np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"visual_id 'b' \(row 1\) has length 9; expected 1..5"):
        VisualFeatureStore.from_arrays(IDS, np.zeros((4, 5, 2)), [5, 9, 1, 1])
    with pytest.raises(ValueError, match="lengths are only for frame features"):
        VisualFeatureStore.from_arrays(IDS, np.zeros((4, 2)), [1, 1, 1, 1])


def _processor():
    import transformers

    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(size={"height": 8, "width": 8}, do_normalize=True)


def test_image_path_store_images_and_frames(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("x.png", "y.png", "f0.png", "f1.png", "f2.png"):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / name)
    images = ImagePathStore.from_split_file(["x.png", "y.png"], tmp_path, _processor())
    pixels, mask = images.lookup(["y.png", "x.png"])
    assert pixels.shape == (2, 3, 8, 8) and mask is None and not images.is_video
    videos = ImagePathStore({"v1": [tmp_path / "f0.png", tmp_path / "f1.png", tmp_path / "f2.png"], "v2": [tmp_path / "f0.png"]})
    pixels, mask = videos.lookup(["v2", "v1"], image_processor=_processor())
    assert pixels.shape == (2, 3, 3, 8, 8) and mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert pixels[0, 1:].abs().sum() == 0 and torch.equal(pixels[0, 0], pixels[1, 0])
    with pytest.raises(KeyError, match="'v3' is not in"):
        videos.lookup(["v3"], image_processor=_processor())
    broken = ImagePathStore({"z": tmp_path / "missing.png"}, _processor())
    with pytest.raises(FileNotFoundError, match=r"visual_id 'z' not found: .*missing\.png"):
        broken.lookup(["z"])
