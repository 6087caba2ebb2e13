"""trainer/configs/demo_pixels.yaml: the demo world's rendered pictures read by a vision backbone
built from a transformers config (random init), both stages, and a checkpoint whose processor turns
a PIL image into the pixels the model expects. The recipe trains bit for bit the same weights run
to run (checked on a shrunk run), which is what lets the repository ship its result, demo_model/
(`make app` serves it, `make demo-model` retrains it): the shipped folder must be the recipe's."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, ConvNextImageProcessorPil, ViTImageProcessorPil

from cl2cm_hf.data import ImagePathStore
from cl2cm_hf.evaluation.records import flat_metrics
from cl2cm_hf.inference import load_model_and_processor
from cl2cm_hf.search.fingerprint import model_display_name
from cl2cm_hf.training.model_setup import scratch_image_processor, scratch_vision_backbone
from cl2cm_hf.training.recipe import load_config, parse_config

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "trainer" / "configs" / "demo_pixels.yaml"
DEMO_MODEL = REPO / "demo_model"  # the recipe's final folder, shipped (Makefile: app, demo-model)
SETTINGS = load_config(RECIPE)
SIDE, VISION_TYPE = SETTINGS["demo_image_size"], SETTINGS["vision_config"]["model_type"]
# A few items, one epoch per stage, tiny text tower: the recipe's data path and vision tower as shipped.
SHRUNK = [
    "--demo_items", "24", "--demo_validation_items", "6", "--demo_test_items", "6", "--num_train_epochs", "1",
    "--cl_num_train_epochs", "1", "--per_device_train_batch_size", "16", "--text_hidden_size", "32",
    "--text_num_heads", "2", "--projection_dim", "16", "--tokenizer_vocab_size", "300", "--ot_iterations", "5",
    "--logging_steps", "1", "--report_to", "none",
]


def test_recipe_parses_as_a_pixel_backbone_run():
    model_args, data_args, _, training_args = parse_config(load_config(RECIPE))
    assert data_args.dataset == "demo" and data_args.demo_pixels and model_args.visual_encoder_type == "backbone"
    assert model_args.vision_model is None and model_args.vision_config["image_size"] == data_args.demo_image_size
    assert training_args.dataloader_num_workers == 0
    # Stage 2 trains the text tower: frozen, it cost 55-130 test SumR (the recipe's header).
    assert model_args.freeze_text_layers == 0


def train_shrunk(tmp_path_factory):
    from cl2cm_hf.training.run import train

    out = tmp_path_factory.mktemp("demo_pixels") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        records = train([str(RECIPE), "--output_dir", str(out), *SHRUNK])
    return out, records


@pytest.fixture(scope="module")
def shrunk_run(tmp_path_factory):
    return train_shrunk(tmp_path_factory)


def test_shrunk_recipe_trains_both_stages_on_rendered_pictures(shrunk_run):
    out, records = shrunk_run
    assert {"de_sumr", "fr_sumr"} <= set(flat_metrics(records))
    assert (out / "cross_lingual" / "config.json").is_file()
    pictures = [p for p in (out / "demo_pictures").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in pictures] == [f"image_seed42_{SIDE}px"] and len(list(pictures[0].glob("*.png"))) == 36
    saved = json.loads((out / "cross_modal" / "config.json").read_text())
    assert saved["visual_encoder_type"] == "backbone" and saved["vision_config"]["model_type"] == VISION_TYPE


def test_checkpoint_processor_makes_the_pixels_the_model_reads(shrunk_run):
    final = shrunk_run[0] / "cross_modal"
    model = AutoModel.from_pretrained(final, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(final, trust_remote_code=True)
    assert type(processor.image_processor).__name__ == "ConvNextImageProcessorPil"
    gallery = ImagePathStore.load(final / "test_gallery")
    visual_id = gallery.ids[0]
    image = Image.open(gallery.paths(visual_id)[0]).convert("RGB")
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, SIDE, SIDE)
    # The same pixels as training's image processor made from the rendered file.
    training_pixels, _ = gallery.lookup([visual_id], scratch_image_processor(model.config.vision_config.to_dict()))
    torch.testing.assert_close(pixels, training_pixels, rtol=0, atol=0)
    with torch.no_grad():
        assert model.get_image_features(pixel_values=pixels).pooler_output.shape == (1, model.config.projection_dim)


def test_vision_tower_and_image_processor_from_a_config():
    vit = {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 64}
    assert scratch_vision_backbone(vit).config.image_size == 32
    processor = scratch_image_processor(vit)
    assert isinstance(processor, ViTImageProcessorPil) and processor.size == {"height": 32, "width": 32}
    convnext = {"model_type": "convnext", "image_size": 48, "num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1]}
    assert scratch_vision_backbone(convnext).config.hidden_size == 16  # the pooled width CL2CM projects from
    processor = scratch_image_processor(convnext)
    assert isinstance(processor, ConvNextImageProcessorPil) and processor.crop_pct == 1.0
    with pytest.raises(ValueError, match="vision_config.image_size=None"):
        scratch_image_processor({"model_type": "vit"})
    with pytest.raises(ValueError, match="vision_model and vision_config: set one"):
        parse_config(load_config(RECIPE, ["--vision_model", "some/vit"]))
    with pytest.raises(ValueError, match="set visual_encoder_type: backbone"):
        parse_config(load_config(RECIPE, ["--visual_encoder_type", "features"]))


def test_shrunk_recipe_trains_the_same_weights_bit_for_bit(shrunk_run, tmp_path_factory):
    """Two runs of the recipe (shrunk) give identical weights in both stages: what `make demo-model`
    retrains is the shipped model, not one like it."""
    again, records = train_shrunk(tmp_path_factory)
    assert flat_metrics(records) == flat_metrics(shrunk_run[1])
    for stage in ("cross_lingual", "cross_modal"):
        first, second = (load_file(out / stage / "model.safetensors") for out in (shrunk_run[0], again))
        assert first.keys() == second.keys() and first
        different = [name for name in first if not torch.equal(first[name], second[name])]
        assert not different, f"{stage}: {len(different)} of {len(first)} weights differ, e.g. {different[:3]}"


def comparable(settings: dict) -> dict:
    """Settings as a recorded run and the recipe both state them: cpu_threads 1 is '1' from a command
    line; pinned memory is a default that follows the machine (no accelerator here: no effect)."""
    return {**settings, "cpu_threads": str(settings["cpu_threads"]), "dataloader_pin_memory": None}


def test_shipped_demo_model_is_the_recipes_and_loads_as_any_checkpoint():
    """demo_model/ was trained by this recipe as it stands (its recorded settings are the recipe's,
    thread count included), passes the checks of every checkpoint load, names itself readably and
    stays small enough for the repository."""
    assert comparable(load_config(DEMO_MODEL / "training_config.yaml")) == comparable(SETTINGS), "retrain: make demo-model"
    model, processor = load_model_and_processor(DEMO_MODEL)
    assert model.config.vision_config.model_type == VISION_TYPE and processor.image_processor is not None
    assert model_display_name(DEMO_MODEL) == Path(SETTINGS["output_dir"]).name
    size = sum(f.stat().st_size for f in DEMO_MODEL.rglob("*") if f.is_file())
    assert size < 10 * 2**20, f"demo_model/ holds {size / 2**20:.1f} MiB"
