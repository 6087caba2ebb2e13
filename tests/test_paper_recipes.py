"""The paper-setting recipes (Multi30K with CLIP features and mBERT, VATEX with frame features) parse,
read their data layout, build both networks and run one loss step of each stage, at tiny size and
without network: the towers are replaced by a tiny random BERT with mBERT's real vocabulary (the
tokenizer from ../shared), the data by a few generated files in the recipe's own layout."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MBERT_DIR, requires_shared

from cl2cm_hf.data import PairCollator, VisualFeatureStore
from cl2cm_hf.training.data_sources import build_run_data
from cl2cm_hf.training.model_setup import build_cross_lingual, build_cross_modal
from cl2cm_hf.training.recipe import load_config, parse_config
from cl2cm_hf.training.run import stage_training_args
from cl2cm_hf.training.trainers import CrossLingualTrainer, CrossModalTrainer

pytestmark = [pytest.mark.slow, requires_shared]

MULTI30K = {"de": "multi30k_clip_mbert_de.yaml", "fr": "multi30k_clip_mbert_fr.yaml", "cs": "multi30k_clip_mbert_cs.yaml"}
CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
SENTENCES = {
    "en": ["a man plays a guitar on the street", "two dogs run through the snow", "a woman rides a red bike",
           "children play football in a park", "a cook cuts vegetables", "an old man reads a newspaper"],
    "de": ["ein Mann spielt Gitarre auf der Straße", "zwei Hunde laufen durch den Schnee", "eine Frau fährt ein rotes Fahrrad",
           "Kinder spielen Fußball in einem Park", "ein Koch schneidet Gemüse", "ein alter Mann liest Zeitung"],
    "fr": ["un homme joue de la guitare dans la rue", "deux chiens courent dans la neige", "une femme fait du vélo rouge",
           "des enfants jouent au football dans un parc", "un cuisinier coupe des légumes", "un vieil homme lit le journal"],
    "cs": ["muž hraje na kytaru na ulici", "dva psi běží sněhem", "žena jede na červeném kole",
           "děti hrají fotbal v parku", "kuchař krájí zeleninu", "starý muž čte noviny"],
    "zh": ["一个男人在街上弹吉他", "两只狗在雪地里跑", "一个女人骑着红色自行车", "孩子们在公园里踢足球", "厨师在切菜", "一位老人在看报纸"],
}


@pytest.fixture(scope="module")
def tiny_mbert(tmp_path_factory):
    """A 2-layer, 32-wide BERT with mBERT's vocabulary, saved as a folder (the text_model override)."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_mbert")
    config = BertConfig(vocab_size=119547, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mbert_tokenizer(tmp_path_factory):
    """The real mBERT (cased) tokenizer from ../shared, saved as a complete tokenizer folder."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("mbert_tokenizer")
    tokenizer = BertTokenizerFast(
        tokenizer_file=str(MBERT_DIR / "tokenizer.json"), vocab_file=str(MBERT_DIR / "vocab.txt"), do_lower_case=False
    )
    tokenizer.save_pretrained(folder)
    return folder


def _gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _text(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def fake_multi30k(root, lang: str, feature_dim: int = 512):
    """Multi30K's data/ layout (task1, task2) for 6 train, 4 val and 4 test images, plus mt/ and features/."""
    splits = {"train": 6, "val": 4, "test_2016_flickr": 4}
    ids = {}
    for split, n in splits.items():
        ids[split] = [f"{split}{i}.jpg" for i in range(n)]
        _text(root / "task1" / "image_splits" / f"{split}.txt", ids[split])
        for code in ("en", lang):
            _gz(root / "task1" / "raw" / f"{split}.{code}.gz", SENTENCES[code][:n])
        if split != "test_2016_flickr":
            _text(root / "task2" / "image_splits" / f"{split}_images.txt", ids[split])
            for k in range(1, 6):
                _gz(root / "task2" / "raw" / f"{split}.{k}.en.gz", [f"{s} ({k})" for s in SENTENCES["en"][:n]])
            _text(root / "mt" / f"{split}.en-{lang}.txt", [f"{s} !" for s in SENTENCES[lang][:n]])
    every = [i for split in splits for i in ids[split]]
    _text(root / "features" / "clip-vit-b32.ids.txt", every)
    features = np.random.default_rng(0).standard_normal((len(every), feature_dim)).astype("float16")
    np.save(root / "features" / "clip-vit-b32.npy", features)


def fake_vatex(root, feature_dim: int = 1024):
    """NRCCR caption files and a frame-feature store (video ids, up to 4 frames) for 6/3/3 videos."""
    videos = {"train": [f"v{i}" for i in range(6)], "val": [f"v{i}" for i in range(6, 9)], "test": [f"v{i}" for i in range(9, 12)]}
    text = root / "TextData"
    lines = lambda vids, code, tag, n=2: [f"{v}#{tag}#{k} {SENTENCES[code][i % 6]} {k}" for i, v in enumerate(vids) for k in range(n)]  # noqa: E731
    _text(text / "vatex_train.en.caption.txt", lines(videos["train"], "en", "enc"))
    _text(text / "vatex_train.google_en2zh.caption.txt", lines(videos["train"], "zh", "zh"))
    _text(text / "vatex_val.zh.caption.txt", lines(videos["val"], "zh", "zh"))
    _text(text / "vatex_test.zh.caption.txt", lines(videos["test"], "zh", "zh"))
    every = [v for vids in videos.values() for v in vids]
    frames = np.random.default_rng(0).standard_normal((len(every), 4, feature_dim)).astype("float32")
    VisualFeatureStore.from_arrays(every, frames, lengths=[1 + i % 4 for i in range(len(every))]).save(root / "FeatureData" / "i3d_kinetics")


def one_step_of_each_stage(values):
    """Data, both networks and one loss + backward of each stage, as run.py builds them."""
    args = parse_config(values)
    model_args, data_args, cl2cm_args, training_args = args
    data = build_run_data(data_args, model_args, training_args)
    assert len(data.train_pairs) and len(data.validation_queries) and len(data.test_queries)
    assert set(data.test_queries["lang"]) >= set(data_args.target_langs)

    cl = build_cross_lingual(model_args, data.tokenizer, data_args.max_length)
    rows = [data.train_pairs[i] for i in range(min(4, len(data.train_pairs)))]
    batch = PairCollator(data.tokenizer, None, data_args.max_length, model_args.text_prefix)(rows)
    trainer = CrossLingualTrainer(model=cl, args=stage_training_args(training_args, "cl"), cl2cm_args=cl2cm_args, eval_dataset=data.validation_pairs,
                                  processing_class=data.tokenizer)
    loss = trainer.compute_loss(cl, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()

    cm = build_cross_modal(model_args, data.tokenizer, data_args.max_length, data.features.feature_dim, cl)
    if data.features.feature_dim is not None:  # None: pixels for a vision backbone
        assert cm.config.visual_feature_dim == data.features.feature_dim
    batch = PairCollator(data.tokenizer, data.features, data_args.max_length, model_args.text_prefix)(rows)
    trainer = CrossModalTrainer(model=cm, args=stage_training_args(training_args, "cm"), cl2cm_args=cl2cm_args, eval_dataset=data.validation_queries,
                                processing_class=data.tokenizer, teacher_model=cl)
    loss = trainer.compute_loss(cm, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert any(p.grad is not None for p in cm.text_model.parameters())
    return args, cm


@pytest.mark.parametrize("lang", ["de", "fr", "cs"])
def test_multi30k_recipe_builds_and_steps(tmp_path, tiny_mbert, mbert_tokenizer, lang):
    recipe = CONFIGS / MULTI30K[lang]
    untouched = parse_config(load_config(recipe))
    model_args, data_args, cl2cm_args, training_args = untouched
    assert model_args.text_model == "bert-base-multilingual-cased" and data_args.dataset == "multi30k"
    assert data_args.target_langs == [lang] and data_args.test_split == "test_2016_flickr" and data_args.source_task == 2
    assert cl2cm_args.stage == "both" and cl2cm_args.lambda_kt > 0 and cl2cm_args.lambda_word > 0
    assert training_args.load_best_model_at_end and training_args.metric_for_best_model == "sumr"

    root = tmp_path / "multi30k"
    fake_multi30k(root, lang)
    values = load_config(recipe, [
        "--data_root", str(root), "--text_model", str(tiny_mbert), "--tokenizer", str(mbert_tokenizer),
        "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--dataloader_num_workers", "0",
    ])
    args, cm = one_step_of_each_stage(values)
    assert args[1].mt_train_file == "mt/train.en-{lang}.txt"
    assert cm.config.projection_dim == 1024 and cm.config.visual_encoder_type == "features"


def test_vatex_recipe_builds_and_steps(tmp_path, tiny_mbert, mbert_tokenizer):
    recipe = CONFIGS / "vatex_zh.yaml"
    model_args, data_args, cl2cm_args, _ = parse_config(load_config(recipe))
    assert data_args.dataset == "nrccr" and data_args.target_langs == ["zh"] and model_args.visual_num_layers >= 1
    assert model_args.text_model == "bert-base-multilingual-cased" and cl2cm_args.loss in ("infonce", "triplet")

    fake_vatex(tmp_path / "vatex")
    values = load_config(recipe, [
        "--data_root", str(tmp_path / "vatex"), "--text_model", str(tiny_mbert), "--tokenizer", str(mbert_tokenizer),
        "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--dataloader_num_workers", "0",
    ])
    _, cm = one_step_of_each_stage(values)
    assert cm.config.visual_num_layers == model_args.visual_num_layers


def fake_vatex_videos(root, ids, side: int = 32) -> Path:
    """The same videos as .mp4 files (2 to 5 frames each) in a folder with images.json, the recipe's second way in."""
    from cl2cm_hf.data.demo_video_files import write_mp4

    folder = root / "VideoData"
    (folder / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, video in enumerate(ids):
        write_mp4(folder / "videos" / f"{video}.mp4", list(rng.integers(0, 256, (2 + i % 4, side, side, 3), dtype=np.uint8)))
    (folder / "images.json").write_text(json.dumps({"items": {v: f"videos/{v}.mp4" for v in ids}}))
    return folder


def test_vatex_recipe_from_video_files_builds_and_steps(tmp_path, tiny_mbert, mbert_tokenizer):
    """The recipe's second way in: .mp4 files decoded and sampled by the video processor, a vision backbone on the frames."""
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    from conftest import tiny_clip_vision_config
    from transformers import CLIPImageProcessorPil, CLIPVisionModel

    root = tmp_path / "vatex"
    fake_vatex(root)
    fake_vatex_videos(root, [f"v{i}" for i in range(12)])
    vision = tmp_path / "clip_vision"  # a tiny pretrained image backbone with its image processor
    CLIPVisionModel(tiny_clip_vision_config()).save_pretrained(vision)
    CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(vision)
    values = load_config(CONFIGS / "vatex_zh.yaml", [
        "--data_root", str(root), "--text_model", str(tiny_mbert), "--tokenizer", str(mbert_tokenizer),
        "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--dataloader_num_workers", "0",
        "--features_file", "VideoData", "--visual_encoder_type", "backbone", "--vision_model", str(vision), "--video_num_frames", "3",
    ])
    _, cm = one_step_of_each_stage(values)
    assert cm.config.visual_encoder_type == "backbone"
    model_args, data_args, _, training_args = parse_config(values)
    data = build_run_data(data_args, model_args, training_args)
    assert data.features.video_processor.num_frames == 3
    pixels, mask = data.features.lookup(["v0", "v3"])
    assert pixels.shape[:2] == (2, 3) and mask.tolist() == [[1, 1, 0], [1, 1, 1]]  # 2 frames padded; 5 sampled to 3


def test_recipes_name_only_known_settings():
    """Every paper recipe is a flat mapping of known settings (load_config rejects unknown keys)."""
    for name in [*MULTI30K.values(), "vatex_zh.yaml"]:
        values = load_config(CONFIGS / name)
        assert json.dumps(values, default=str)
