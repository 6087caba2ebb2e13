"""The built-in demo world: a generated multilingual scene dataset, the embedded default (no download).

`build_demo_world` samples distinct scenes (`demo_scenes`), splits them by visual item into
train/validation/test, encodes them with the fixed random "vision backbone" plus Gaussian noise
(images: one vector; videos: 4-12 frames in which objects enter and leave), writes English
captions and their literal German/French translations with MT noise and semantic MT errors
(`demo_grammar`, `demo_mt_noise`) as training pairs, and human-style German/French captions
(templates the MT side never uses) plus the English captions as validation/test queries. A harder world
(`confusable`) makes scenes near copies of the scene before them. Everything is determined by
`seed`; the backbone only by its own seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
from datasets import DatasetDict
from PIL import Image

from cl2cm_hf.atomic import atomic_directory
from cl2cm_hf.data import demo_render
from cl2cm_hf.data.demo_grammar import HUMAN_REALIZERS, MT_REALIZERS, detokenize, plan_caption, realize_en
from cl2cm_hf.data.demo_mt_noise import add_mt_noise, semantic_error
from cl2cm_hf.data.demo_scenes import BACKBONE_SEED, Scene, SceneEncoder, confusable_variant, sample_scene, video_schedule
from cl2cm_hf.data.features import MissingVisualIdError, VisualFeatureStore
from cl2cm_hf.data.image_paths import ImagePathStore
from cl2cm_hf.data.schemas import make_pairs, make_queries
from cl2cm_hf.data.splits import RetrievalData
from cl2cm_hf.errors import CL2CMError

SPLITS = ("train", "validation", "test")
RENDER_MANIFEST = "render.json"  # what a folder of pictures was rendered from: size, world, items, renderer, Pillow
_STREAMS = {"scenes": 0, "captions": 1, "mt": 2, "human": 3, "features": 4, "frames": 5, "corpus": 6, "pixels": 7,
            "semantic": 8}


@dataclass
class DemoWorld(RetrievalData):
    """Pairs (train/validation/test), queries (validation/test, langs en + targets), features,
    plus the scenes behind the items and an extra text corpus."""

    scenes: dict[str, Scene]
    splits: dict[str, list[str]]  # split -> visual ids
    corpus: list[str]  # monolingual en/de/fr text from other scenes (tokenizer training)
    stats: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def tokenizer_corpus(self) -> list[str]:
        """Texts to train a tokenizer on: training pairs (both sides) and the extra corpus."""
        train = self.pairs["train"]
        return list(train["source_text"]) + list(train["target_text"]) + self.corpus

    def _schedules(self) -> list[list[set[int]]] | None:
        """Per item, the objects present in each frame (the frame features' schedule); None for images."""
        missing = [key for key in ("seed", "visual_kind", "frames") if key not in self.config]
        if missing:
            raise CL2CMError(f"DemoWorld.config lacks {missing}; pictures need a world made by build_demo_world")
        if self.config["visual_kind"] != "video":
            return None
        return _video_schedules(list(self.scenes.values()), self.config["seed"], tuple(self.config["frames"]))

    def pictures(self, visual_ids: Sequence[str] | None = None, size: int = 64) -> Iterator[tuple[str, Image.Image | list[Image.Image]]]:
        """``(visual_id, picture)`` for `visual_ids` (default: every item), drawn one at a time: an image
        item's picture, or a video item's frames, whose objects enter and leave on the schedule of its
        frame features. Item ``row`` draws from its own generator ``(seed, "pixels", row)``, so a
        picture does not depend on which other items are drawn."""
        schedules, scenes = self._schedules(), list(self.scenes.values())
        rows = {visual_id: row for row, visual_id in enumerate(self.scenes)}
        unknown = [i for i in visual_ids or () if i not in rows]
        if unknown:
            raise MissingVisualIdError(f"visual ids {unknown[:5]} are not items of this demo world ({len(rows)} items)")
        for visual_id in self.scenes if visual_ids is None else visual_ids:
            row = rows[visual_id]
            rng = _rng(self.config["seed"], "pixels", row)
            if schedules is None:
                yield visual_id, demo_render.render_scene(scenes[row], size, rng)
            else:
                yield visual_id, demo_render.render_video(scenes[row], schedules[row], size, rng)

    def render_manifest(self, size: int) -> str:
        """What the world's pictures at `size` are drawn from (world, items, renderer, Pillow), as JSON:
        a rendered folder holding the same manifest is reused."""
        return json.dumps({"size": size, **{key: self.config[key] for key in ("seed", "visual_kind", "frames")},
                           "items_sha256": _sha256(repr(list(self.scenes.items()))),
                           "renderer_sha256": _sha256(Path(demo_render.__file__).read_text(encoding="utf-8")),
                           "pillow": PIL.__version__})

    def render_images(self, folder: str | os.PathLike, size: int = 64) -> dict[str, Path | list[Path]]:
        """Every item's `pictures` as PNG files, for a vision tower that reads pixels.

        ``<id>.png`` per image item, ``<id>/<frame>.png`` per video frame. Returns visual id -> path
        (video: list of frame paths), the mapping `ImagePathStore` takes. The folder is written whole
        (`atomic_directory`: a killed run leaves no half folder); one already rendered from the same
        items at the same size by the same renderer and Pillow is reused, so runs pay the rendering once.
        """
        folder, schedules = Path(folder), self._schedules()
        paths = {visual_id: folder / f"{visual_id}.png" if schedules is None
                 else [folder / visual_id / f"{t:02d}.png" for t in range(len(schedules[row]))]
                 for row, visual_id in enumerate(self.scenes)}
        manifest = self.render_manifest(size)
        if (folder / RENDER_MANIFEST).is_file() and (folder / RENDER_MANIFEST).read_text(encoding="utf-8") == manifest:
            return paths
        with atomic_directory(folder) as tmp:
            for visual_id, picture in self.pictures(size=size):
                if isinstance(picture, list):
                    (tmp / visual_id).mkdir()
                    for frame, path in zip(picture, paths[visual_id]):
                        frame.save(tmp / path.relative_to(folder))
                else:
                    picture.save(tmp / paths[visual_id].relative_to(folder))
            (tmp / RENDER_MANIFEST).write_text(manifest, encoding="utf-8")
        return paths

    def image_store(self, folder: str | os.PathLike, size: int = 64, image_processor=None) -> ImagePathStore:
        """An `ImagePathStore` over `render_images(folder, size)`: the pixel counterpart of `features`."""
        return ImagePathStore(self.render_images(folder, size), image_processor, name=f"demo world pictures {folder} ({size} px)")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], *extra])


def _lang_key(lang: str) -> int:
    return int.from_bytes(lang.encode("utf-8"), "little")


def _sample_scenes(count: int, rng: np.random.Generator, confusable: float = 0.0) -> list[Scene]:
    scenes, seen = [], set()
    while len(scenes) < count:
        # No draw at all when confusable is 0: today's worlds stay the same.
        near = confusable and scenes and rng.random() < confusable
        scene = confusable_variant(scenes[-1], rng) if near else sample_scene(rng)
        if scene.key() not in seen:  # two identical items would make retrieval ambiguous
            seen.add(scene.key())
            scenes.append(scene)
    return scenes


def _video_schedules(scenes: list[Scene], seed: int, frames: tuple[int, int]) -> list[list[set[int]]]:
    """Objects present per frame of each video (its length drawn from `frames`): one source for the
    frame features and the rendered frames, so both show the same objects entering and leaving."""
    rng = _rng(seed, "frames")
    lengths = rng.integers(frames[0], frames[1] + 1, size=len(scenes))
    return [video_schedule(scene, int(length), rng) for scene, length in zip(scenes, lengths)]


def _features(scenes: list[Scene], ids: list[str], kind: str, encoder: SceneEncoder, noise: float, seed: int,
              frames: tuple[int, int]) -> VisualFeatureStore:
    rng = _rng(seed, "features")
    name = f"demo world {kind} features (seed={seed})"
    if kind == "image":
        values = encoder(np.stack([encoder.code(s) for s in scenes]))
        values += noise * rng.standard_normal(values.shape)
        return VisualFeatureStore.from_arrays(ids, values.astype(np.float32), name=name)
    schedules = _video_schedules(scenes, seed, frames)
    lengths = np.array([len(schedule) for schedule in schedules])
    codes = [encoder.code(scene, present) for scene, schedule in zip(scenes, schedules) for present in schedule]
    values = encoder(np.stack(codes))  # one batched call: all frames of all items
    values += noise * rng.standard_normal(values.shape)
    array = np.zeros((len(scenes), frames[1], encoder.feature_dim), dtype=np.float32)
    array[np.arange(frames[1])[None, :] < lengths[:, None]] = values
    return VisualFeatureStore.from_arrays(ids, array, lengths, name=name)


def build_demo_world(
    seed: int = 0,
    num_items: int = 1500,
    mt_noise: float = 0.3,
    mt_semantic_errors: float = 0.0,
    confusable: float = 0.0,
    visual_kind: str = "image",
    feature_dim: int = 128,
    target_langs: tuple[str, ...] = ("de", "fr"),
    val_items: int = 200,
    test_items: int = 300,
    captions_per_item: int = 2,
    human_captions_per_item: int = 1,
    feature_noise: float = 0.1,
    frames: tuple[int, int] = (4, 12),
    corpus_items: int = 500,
    backbone_seed: int = BACKBONE_SEED,
) -> DemoWorld:
    """Build the demo world.

    Args:
        num_items: training visual items (validation and test items come on top).
        mt_noise: probability that an MT sentence is corrupted (1-3 edits).
        mt_semantic_errors: probability that an MT sentence says a wrong colour, noun or relation
            (`demo_mt_noise.semantic_error`; its own random stream, so 0 leaves every sentence as it was).
        confusable: probability that a scene is the scene before it with one colour, noun or
            relation changed (`demo_scenes.confusable_variant`): pairs of items only one word tells apart.
        visual_kind: ``"image"`` (features ``(N, feature_dim)``) or ``"video"`` (``(N, T, feature_dim)``
            with ``T`` drawn from `frames`, objects entering and leaving).
        captions_per_item: English captions per item; each gives one pair per target language.
        human_captions_per_item: human-style target-language queries per item and language.
        feature_noise: standard deviation of the Gaussian noise added to the backbone output.
        corpus_items: scenes (outside every split) whose captions form the extra tokenizer corpus.
    """
    if visual_kind not in ("image", "video"):
        raise CL2CMError(f"visual_kind={visual_kind!r}; expected 'image' or 'video'")
    unknown = [lang for lang in target_langs if lang not in MT_REALIZERS]
    if unknown:
        raise CL2CMError(f"target_langs {unknown} have no demo grammar; available: {sorted(MT_REALIZERS)}")
    if min(num_items, val_items, test_items, captions_per_item, human_captions_per_item) < 1:
        raise CL2CMError("num_items, val_items, test_items and the captions per item must be >= 1")
    if not 0.0 <= mt_semantic_errors <= 1.0:
        raise CL2CMError(f"mt_semantic_errors={mt_semantic_errors!r}; expected a rate in [0, 1]")
    if not 0.0 <= confusable < 1.0:
        raise CL2CMError(f"confusable={confusable!r}; expected a probability in [0, 1) (1 would never start a new scene)")
    if not 4 <= frames[0] <= frames[1]:
        raise CL2CMError(f"frames={frames!r}; expected (min, max) with 4 <= min <= max")

    sizes = {"train": num_items, "validation": val_items, "test": test_items}
    scenes = _sample_scenes(sum(sizes.values()) + corpus_items, _rng(seed, "scenes"), confusable)
    corpus_scenes, scenes = scenes[sum(sizes.values()):], scenes[: sum(sizes.values())]
    prefix = "img" if visual_kind == "image" else "vid"
    ids = [f"{prefix}{i:05d}" for i in range(len(scenes))]
    bounds = np.cumsum([0, *sizes.values()])
    splits = {split: ids[bounds[k] : bounds[k + 1]] for k, split in enumerate(SPLITS)}
    by_id = dict(zip(ids, scenes))

    caption_rng, human_rng = _rng(seed, "captions"), _rng(seed, "human")
    mt_rngs = {lang: _rng(seed, "mt", _lang_key(lang)) for lang in target_langs}
    semantic_rngs = {lang: _rng(seed, "semantic", _lang_key(lang)) for lang in target_langs}
    edits: Counter = Counter()
    semantic: Counter = Counter()
    corrupted = total_mt = 0
    pairs, queries = {}, {}
    for split in SPLITS:
        rows = {k: [] for k in ("visual_id", "source_text", "target_text", "target_lang", "caption_id")}
        query_rows = {k: [] for k in ("visual_id", "text", "lang")}
        for visual_id in splits[split]:
            scene = by_id[visual_id]
            for k in range(captions_per_item):
                plan = plan_caption(scene, caption_rng)
                english = realize_en(scene, plan)
                query_rows["visual_id"].append(visual_id)
                query_rows["text"].append(english)
                query_rows["lang"].append("en")
                for lang in target_langs:
                    mt_scene, mt_plan = scene, plan
                    if semantic_rngs[lang].random() < mt_semantic_errors:
                        mt_scene, mt_plan, kind = semantic_error(scene, plan, semantic_rngs[lang])
                        semantic[kind] += 1
                    target, applied = add_mt_noise(MT_REALIZERS[lang](mt_scene, mt_plan), mt_noise, mt_rngs[lang])
                    edits.update(applied)
                    corrupted += bool(applied)
                    total_mt += 1
                    for key, value in zip(rows, (visual_id, english, target, lang, f"{visual_id}#{k}")):
                        rows[key].append(value)
            for lang in target_langs:
                for _ in range(human_captions_per_item):
                    query_rows["visual_id"].append(visual_id)
                    query_rows["text"].append(HUMAN_REALIZERS[lang](scene, human_rng))
                    query_rows["lang"].append(lang)
        pairs[split] = make_pairs(rows, f"demo world {split} pairs")
        if split != "train":
            queries[split] = make_queries(query_rows, f"demo world {split} queries")

    corpus_rng = _rng(seed, "corpus")
    corpus = []
    for scene in corpus_scenes:
        plan = plan_caption(scene, corpus_rng)
        corpus.append(realize_en(scene, plan))
        for lang in target_langs:
            corpus += [detokenize(MT_REALIZERS[lang](scene, plan)), HUMAN_REALIZERS[lang](scene, corpus_rng)]

    encoder = SceneEncoder(feature_dim, seed=backbone_seed)
    store = _features(scenes, ids, visual_kind, encoder, feature_noise, seed, frames)
    config = dict(seed=seed, num_items=num_items, val_items=val_items, test_items=test_items, mt_noise=mt_noise,
                  mt_semantic_errors=mt_semantic_errors, confusable=confusable, visual_kind=visual_kind, feature_dim=feature_dim, target_langs=tuple(target_langs),
                  captions_per_item=captions_per_item, human_captions_per_item=human_captions_per_item,
                  feature_noise=feature_noise, frames=tuple(frames), corpus_items=corpus_items, backbone_seed=backbone_seed)
    stats = {"mt_sentences": total_mt, "mt_corrupted": corrupted, "mt_edits": dict(edits), "mt_semantic_errors": dict(semantic)}
    return DemoWorld(DatasetDict(pairs), DatasetDict(queries), store, by_id, splits, corpus, stats, config)


def write_contact_sheet(out: str, size: int = 64, count: int = 16, seed: int = 0) -> None:
    """The demo world's first `count` test pictures with their English captions, as `out` (PNG).
    ``docs/demo_scenes.png`` is ``write_contact_sheet("docs/demo_scenes.png")``."""
    world = build_demo_world(seed=seed)
    ids = world.splits["test"][:count]
    english = {}
    for row in world.queries["test"]:
        if row["lang"] == "en":
            english.setdefault(row["visual_id"], row["text"])
    images = dict(world.pictures(ids, size))
    demo_render.contact_sheet([images[i] for i in ids], [english[i] for i in ids]).save(out)
