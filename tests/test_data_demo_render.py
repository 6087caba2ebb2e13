"""Pictures of the demo world: deterministic pixels, one silhouette per noun, colour, size, relations
as positions, action marks, videos whose frames follow `video_schedule`, and the rendered folder
that an `ImagePathStore` reads."""

import numpy as np
import pytest
import torch
from PIL import Image

from cl2cm_hf.data import build_demo_world, render_scene, render_video
from cl2cm_hf.data.demo_lexicon import ACTIONS, RELATIONS
from cl2cm_hf.data.demo_render import ACTION_RGB, COLOUR_RGB
from cl2cm_hf.data.demo_scenes import NOUN_KEYS, DemoObject, Scene, sample_scene, video_schedule
from cl2cm_hf.data.demo_world import RENDER_MANIFEST

SIZE = 64
TINY = dict(num_items=6, val_items=2, test_items=2, corpus_items=1)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def masks(scene: Scene, seed: int, size: int = SIZE) -> list[np.ndarray]:
    """Where each object is: the frame showing only it against the empty frame (same camera)."""
    frames = render_video(scene, [set(), *({i} for i in range(len(scene.objects)))], size, np.random.default_rng(seed))
    empty = pixels(frames[0])
    return [np.abs(pixels(frame) - empty).max(axis=-1) > 40 for frame in frames[1:]]


def one(noun: str, colour: str = "red", size: str | None = None, action: str | None = None) -> Scene:
    return Scene((DemoObject(noun, colour, size, action),))


def rows_cols(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(mask)
    assert rows.size, "object not drawn"
    return rows, cols


def test_same_generator_same_bytes_and_scenes_differ():
    scenes = [sample_scene(np.random.default_rng(k)) for k in range(6)]
    for scene in scenes:
        a, b = render_scene(scene, SIZE, np.random.default_rng(11)), render_scene(scene, SIZE, np.random.default_rng(11))
        assert a.size == (SIZE, SIZE) and a.mode == "RGB" and a.tobytes() == b.tobytes()
        assert render_scene(scene, SIZE).tobytes() == render_scene(scene, SIZE).tobytes()  # default: from the scene
        assert render_scene(scene, SIZE, np.random.default_rng(12)).tobytes() != a.tobytes()  # jitter follows the seed
    pictures = {render_scene(scene, SIZE, np.random.default_rng(11)).tobytes() for scene in scenes}
    assert len(pictures) == len(scenes)
    assert render_scene(scenes[0], 96).size == (96, 96)


def test_every_noun_has_its_own_silhouette():
    objects = {noun: masks(one(noun), seed=0)[0] for noun in NOUN_KEYS}
    images = {noun: pixels(render_scene(one(noun), SIZE, np.random.default_rng(0))) for noun in NOUN_KEYS}
    for i, a in enumerate(NOUN_KEYS):
        for b in NOUN_KEYS[i + 1:]:
            union = objects[a] | objects[b]
            iou = (objects[a] & objects[b]).sum() / union.sum()
            differ = (np.abs(images[a] - images[b]).max(axis=-1) > 40)[union].mean()
            assert iou < 0.85 and differ > 0.3, (a, b, iou, differ)


@pytest.mark.parametrize("colour", sorted(COLOUR_RGB))
def test_colour_dominates_the_object(colour):
    rgb = np.array(list(COLOUR_RGB.values()))
    for noun in NOUN_KEYS:
        seed = NOUN_KEYS.index(noun)
        mask = masks(one(noun, colour), seed)[0]
        inside = pixels(render_scene(one(noun, colour), SIZE, np.random.default_rng(seed)))[mask]
        nearest = np.abs(inside[:, None, :] - rgb[None]).sum(axis=-1).argmin(axis=1)
        counts = np.bincount(nearest, minlength=len(rgb))
        assert list(COLOUR_RGB)[counts.argmax()] == colour, (noun, colour, dict(zip(COLOUR_RGB, counts)))
        close = np.abs(inside - np.array(COLOUR_RGB[colour])).max(axis=1) <= 16
        assert close.mean() > 0.3, (noun, colour, close.mean())


def test_size_attribute_changes_the_area():
    for noun in NOUN_KEYS:
        areas = [masks(one(noun, "blue", size), seed=4)[0].sum() for size in ("small", None, "big")]
        assert areas[0] < 0.75 * areas[1] and areas[1] < 0.75 * areas[2], (noun, areas)


@pytest.mark.parametrize("relation", sorted(RELATIONS))
def test_relations_set_positions(relation):
    pairs = [("dog", "table"), ("cat", "house"), ("ball", "box"), ("bird", "tree"), ("cup", "car"), ("book", "chair"), ("bird", "cow")]
    for seed, (a, b) in enumerate(pairs):
        scene = Scene((DemoObject(a, "red"), DemoObject(b, "blue")), ((0, relation, 1),))
        (rows0, cols0), (rows1, cols1) = (rows_cols(m) for m in masks(scene, seed))
        bottom0, bottom1 = rows0.max(), rows1.max()
        if relation == "on":  # standing on the anchor's upper part (a roof, a back, a seat)
            assert bottom0 <= rows1.min() + 0.55 * (bottom1 - rows1.min()) and rows0.mean() < rows1.mean(), (a, b)
        elif relation == "under":
            assert rows0.mean() > rows1.mean() and bottom0 >= bottom1 - 1, (a, b)
        elif relation == "next to":  # same ground, side by side
            assert abs(bottom0 - bottom1) <= 2 and not set(cols0) & set(cols1), (a, b)
        elif relation == "in front of":  # nearer: lower on the floor, and drawn over the anchor
            assert bottom0 > bottom1 + 2, (a, b)
        else:
            assert bottom0 < bottom1 - 2, (a, b)


def test_in_front_of_occludes_the_anchor_and_behind_is_occluded():
    for relation, front in (("in front of", 0), ("behind", 1)):
        scene = Scene((DemoObject("cow", "red"), DemoObject("house", "blue")), ((0, relation, 1),))
        both = pixels(render_scene(scene, SIZE, np.random.default_rng(2)))
        alone = pixels(render_video(scene, [{front}], SIZE, np.random.default_rng(2))[0])
        overlap = masks(scene, 2)[0] & masks(scene, 2)[1]
        assert overlap.sum() > 10
        assert (np.abs(both - alone).max(axis=-1)[overlap] <= 8).mean() > 0.9  # the front object is whole


def test_three_objects_keep_both_relations():
    scene = Scene((DemoObject("cat", "white"), DemoObject("table", "grey"), DemoObject("ball", "red", "small")),
                  ((0, "on", 1), (2, "under", 1)))
    cat, table, ball = (rows_cols(m) for m in masks(scene, 5))
    assert cat[0].mean() < table[0].mean() < ball[0].mean()


def test_unrelated_objects_stand_side_by_side_and_bad_input_is_named():
    (rows0, cols0), (rows1, cols1) = (rows_cols(m) for m in masks(Scene((DemoObject("dog", "red"), DemoObject("cat", "blue"))), 1))
    assert abs(rows0.max() - rows1.max()) <= 2 and not set(cols0) & set(cols1)
    with pytest.raises(ValueError, match=r"relation \(1, 'on', 0\)"):
        render_scene(Scene((DemoObject("dog", "red"), DemoObject("cat", "blue")), ((1, "on", 0),)))
    with pytest.raises(ValueError, match="schedule names objects \\[3\\]"):
        render_video(one("dog"), [{0}, {3}])


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_actions_leave_a_visible_mark(action):
    plain = pixels(render_scene(one("dog"), SIZE, np.random.default_rng(3)))
    acting = pixels(render_scene(one("dog", action=action), SIZE, np.random.default_rng(3)))
    def magenta(image):
        return (np.abs(image - np.array(ACTION_RGB)).max(axis=-1) <= 40).sum()

    assert magenta(plain) == 0 and magenta(acting) >= 6, action
    others = [pixels(render_scene(one("dog", action=a), SIZE, np.random.default_rng(3))) for a in ACTIONS if a != action]
    assert all(np.abs(acting - other).max(axis=-1).astype(bool).sum() > 20 for other in others)


def test_video_frames_follow_the_schedule():
    scene = Scene((DemoObject("horse", "black"), DemoObject("lamp", "yellow"), DemoObject("bird", "green")),
                  ((0, "next to", 1), (2, "in front of", 1)))
    schedule = video_schedule(scene, 8, np.random.default_rng(0))
    frames = [pixels(f) for f in render_video(scene, [set(), *schedule], SIZE, np.random.default_rng(9))]
    objects = masks(scene, 9)
    for present, frame in zip(schedule, frames[1:]):
        changed = np.abs(frame - frames[0]).max(axis=-1) > 40
        for i, mask in enumerate(objects):
            own = mask & ~np.logical_or.reduce([m for j, m in enumerate(objects) if j != i])
            assert own.sum() > 10
            assert (changed[own].mean() > 0.8) if i in present else (changed[own].mean() < 0.05), (present, i)


def test_render_images_feeds_an_image_path_store(tmp_path):
    world = build_demo_world(seed=4, visual_kind="video", frames=(4, 6), **TINY)
    paths = world.render_images(tmp_path / "a", size=32)
    assert list(paths) == world.features.ids
    assert [len(p) for p in paths.values()] == world.features.lengths.tolist()  # the frame features' schedule
    again = world.render_images(tmp_path / "b", size=32)
    assert all(p.read_bytes() == q.read_bytes() for i in paths for p, q in zip(paths[i], again[i]))  # same world, same files
    first = paths[world.features.ids[0]][0]
    video_id = world.splits["test"][1]
    (_, frames), = world.pictures([video_id], size=32)
    assert [pixels(f).tolist() for f in frames] == [pixels(Image.open(p)).tolist() for p in paths[video_id]]
    stamp = first.stat().st_mtime_ns
    assert world.render_images(tmp_path / "a", size=32) == paths and first.stat().st_mtime_ns == stamp  # reused
    world.render_images(tmp_path / "a", size=24)  # another size: rendered again
    assert first.stat().st_mtime_ns != stamp and '"size": 24' in (tmp_path / "a" / RENDER_MANIFEST).read_text()

    def processor(images, return_tensors):
        return {"pixel_values": torch.stack([torch.from_numpy(pixels(i)).permute(2, 0, 1) / 255.0 for i in images])}

    store = world.image_store(tmp_path / "a", size=24, image_processor=processor)
    values, mask = store.lookup(store.ids[:3])
    assert store.is_video and values.shape[0] == 3 and values.shape[2:] == (3, 24, 24)
    assert mask.sum(1).tolist() == world.features.lengths[:3].tolist()

    images = build_demo_world(seed=4, **TINY)
    store = images.image_store(tmp_path / "img", size=32, image_processor=processor)
    values, mask = store.lookup(images.splits["test"])
    assert mask is None and values.shape == (2, 3, 32, 32)
    assert not torch.equal(values[0], values[1])
