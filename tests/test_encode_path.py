"""One encode path for both kinds of checkpoint: a vision-backbone model trained through the run
on PNG files (an image store), then scored by the evaluator and the leaderboard and queried with
the same functions as a feature model; the processor saved in the final folder makes the inputs."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import build_wordpiece_tokenizer, features_config
from transformers import AutoProcessor, ViTConfig, ViTImageProcessorPil, ViTModel

from cl2cm_hf import CL2CMCrossModalModel, CL2CMProcessor, CL2CMTextProcessor, build_processor
from cl2cm_hf.data import ImagePathStore, VisualFeatureStore, make_queries, open_visual_store
from cl2cm_hf.evaluation.evaluator import CrossModalEvaluator
from cl2cm_hf.inference import as_processor, encode_texts, encode_visual, load_model_and_processor, tokenize
from cl2cm_hf.search import SearchIndex

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
COLORS = {"red": ("rot", "rouge", (220, 30, 30)), "blue": ("blau", "bleu", (30, 30, 220)), "green": ("grün", "vert", (30, 200, 30))}
NOUNS = {"dog": ("hund", "chien", (4, 4, 20, 20)), "car": ("auto", "voiture", (14, 10, 36, 26)), "cat": ("katze", "chat", (20, 2, 30, 38))}


def _write_world(root: Path) -> dict:
    """24 pictures (colour x shape, 40x48 so the processor resizes), pairs en->de/fr for the first 16, validation queries for the next 4 and test queries for the last 4."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    items, texts = {}, {}
    combos = [(c, n) for c in COLORS for n in NOUNS]
    for i in range(24):
        color, noun = combos[i % len(combos)]
        image = Image.fromarray(rng.integers(0, 60, (40, 48, 3), dtype=np.uint8))
        ImageDraw.Draw(image).rectangle(NOUNS[noun][2], fill=COLORS[color][2])
        name = f"img{i:02d}.png"
        image.save(root / "images" / name)
        items[f"v{i}"] = f"images/{name}"
        texts[f"v{i}"] = {"en": f"a {color} {noun}", "de": f"ein {COLORS[color][0]} {NOUNS[noun][0]}",
                          "fr": f"un {NOUNS[noun][1]} {COLORS[color][1]}"}
    (root / "images.json").write_text(json.dumps({"items": items}))
    pairs = [{"visual_id": v, "source_text": texts[v]["en"].replace("a ", article, 1), "target_text": texts[v][lang],
              "target_lang": lang} for v in list(texts)[:16] for lang in ("de", "fr") for article in ("a ", "the ", "one ")]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs))
    for split, ids in (("validation", list(texts)[16:20]), ("test", list(texts)[20:])):
        rows = [{"visual_id": v, "text": texts[v][lang], "lang": lang} for v in ids for lang in ("en", "de", "fr")]
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return texts


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory):
    """A tiny random ViT (image_size 32, with its image processor) trained a few steps in both stages."""
    from cl2cm_hf.cli.train import main as train_main

    root = tmp_path_factory.mktemp("backbone_run")
    texts = _write_world(root)
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64), add_pooling_layer=False)
    vit.save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    recipe = {
        "output_dir": str(root / "run"), "seed": 1, "dataset": "files", "train_file": str(root / "pairs.jsonl"),
        "validation_file": str(root / "validation.jsonl"), "test_file": str(root / "test.jsonl"),
        "features_file": str(root), "visual_encoder_type": "backbone", "vision_model": str(root / "vit"),
        "target_langs": ["de", "fr"], "max_length": 12, "tokenizer_vocab_size": 200, "text_prefix": "query: ",
        "text_hidden_size": 32, "text_num_layers": 1, "text_num_heads": 2, "projection_dim": 16, "visual_num_heads": 2,
        "ot_iterations": 5, "max_steps": 2, "per_device_train_batch_size": 8, "eval_strategy": "no",
        "save_strategy": "no", "load_best_model_at_end": False, "report_to": "none", "dataloader_num_workers": 0,
        "logging_steps": 1, "query": "ein rot hund",
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert train_main([str(root / "recipe.yaml")]) == 0  # the command line: training, then the recipe's query
    return {"root": root, "final": root / "run" / "cross_modal", "texts": texts, "log": log.getvalue()}


def test_final_folder_carries_its_processor(backbone_run):
    final = backbone_run["final"]
    saved = json.loads((final / "processor_config.json").read_text())
    assert saved["processor_class"] == "CL2CMProcessor" and saved["text_prefix"] == "query: "
    assert saved["auto_map"] == {"AutoProcessor": "processing_cl2cm.CL2CMProcessor"}
    assert (final / "processing_cl2cm.py").read_text() == (REPO / "cl2cm_hf" / "processing_cl2cm.py").read_text()
    processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    assert isinstance(processor, CL2CMProcessor) and processor.image_processor.size == {"height": 32, "width": 32}
    gallery = json.loads((final / "test_gallery" / "images.json").read_text())["items"]
    assert sorted(gallery) == [f"v{i}" for i in range(20, 24)]


def test_backbone_checkpoint_scored_and_queried_through_the_one_path(backbone_run):
    from cl2cm_hf.cli.leaderboard import TestSet, score

    final, root = backbone_run["final"], backbone_run["root"]
    model, processor = load_model_and_processor(str(final))
    assert model.config.visual_encoder_type == "backbone"
    # The checkpoint's processor decodes the copied gallery exactly as training's image processor did.
    gallery = open_visual_store(final / "test_gallery")
    original = ImagePathStore.load(root, ViTImageProcessorPil.from_pretrained(root / "vit"))
    ids = gallery.ids
    torch.testing.assert_close(encode_visual(model, gallery, ids, processor=processor),
                               encode_visual(model, original, ids), rtol=0, atol=0)
    # In-memory images: the same embeddings.
    from PIL import Image

    images = [Image.open(gallery.paths(i)[0]).convert("RGB") for i in ids]
    torch.testing.assert_close(encode_visual(model, images, processor=processor, batch_size=2),
                               encode_visual(model, gallery, ids, processor=processor), rtol=0, atol=1e-6)
    queries = make_queries({"visual_id": ["v20", "v21", "v20", "v22"], "text": ["ein rot hund", "ein rot auto", "un chien rouge", "un auto"],
                            "lang": ["de", "de", "fr", "fr"]})
    ranks = CrossModalEvaluator(queries, gallery, processor, ["de", "fr"], max_length=12, dataset="pixels", split="test").ranks(model)
    assert set(ranks) == {"de", "fr"} and len(ranks["de"].t2v) == 2
    metric = pytest.importorskip("evaluate").load(str(REPO / "cl2cm_hf" / "metrics" / "retrieval_recall"))
    rows = score(str(final), model, processor, TestSet("pixels", queries, gallery), ["de", "fr"], metric)
    assert {record.lang for record in rows} == {"de", "fr"}
    hits = SearchIndex.from_store(gallery, model, processor).search("ein rot hund", 3)
    assert len(hits) == 3 and {h.id for h in hits} <= set(ids)
    # The run's own query demo went through the same search.
    log = backbone_run["log"]
    assert "Test retrieval" in log and "query: 'ein rot hund'" in log and "  1. v2" in log


def test_query_script_on_both_kinds_of_checkpoint(backbone_run, tmp_path):
    torch.manual_seed(3)
    folder = tmp_path / "features"
    CL2CMCrossModalModel(features_config(text_prefix="query: ")).save_pretrained(folder)
    build_processor(build_wordpiece_tokenizer(), "query: ").save_pretrained(folder)
    VisualFeatureStore.from_arrays(["a", "b", "c"], torch.randn(3, 48)).save(folder / "gallery")
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor) is CL2CMTextProcessor and processor.image_processor is None
    with pytest.raises(ValueError, match="no image processor"):
        processor(images=[np.zeros((8, 8, 3), dtype=np.uint8)])
    for model_folder, gallery in ((folder, folder / "gallery"), (backbone_run["final"], backbone_run["final"] / "test_gallery")):
        result = subprocess.run([sys.executable, str(REPO / "trainer" / "query.py"), str(model_folder), "ein hund",
                                 "--gallery", str(gallery), "--top", "2"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "query: 'ein hund'" in result.stdout and "  2. " in result.stdout


def test_processor_adds_the_prefix_once_with_the_tokenizers_own_ids():
    tokenizer = build_wordpiece_tokenizer()
    texts = ["a man plays guitar", "ein hund"]
    processor = as_processor(tokenizer, "query: ")
    want = tokenizer(["query: " + t for t in texts], padding=True, truncation=True, max_length=6, return_tensors="pt")
    got = tokenize(processor, texts, 6)
    assert set(got) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert as_processor(processor) is processor and as_processor(processor, "query: ") is processor
    with pytest.raises(ValueError, match="differs from the processor's own text_prefix='query: '"):
        as_processor(processor, "passage: ")
    model = CL2CMCrossModalModel(features_config()).eval()
    direct = model.get_text_features(**{k: v for k, v in want.items() if k != "token_type_ids"}).pooler_output
    torch.testing.assert_close(encode_texts(model.get_text_features, processor, texts, max_length=6), direct)


def test_processor_makes_video_pixels_and_mask():
    image_processor = ViTImageProcessorPil(size={"height": 8, "width": 8})
    processor = build_processor(build_wordpiece_tokenizer(), image_processor=image_processor)
    frames = [np.full((10, 12, 3), v, dtype=np.uint8) for v in (0, 100, 200)]
    out = processor(text="ein hund", videos=[frames[:1], frames], return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 3, 8, 8) and out["visual_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert out["pixel_values"][0, 1:].abs().sum() == 0 and torch.equal(out["pixel_values"][0, 0], out["pixel_values"][1, 0])
    assert out["input_ids"].shape[0] == 1
    with pytest.raises(ValueError, match="video 0 has no frames"):
        processor(videos=[[]])
