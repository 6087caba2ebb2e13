"""trainer/configs/demo_pixels.yaml: the demo world's rendered pictures read by a vision backbone
built from a transformers config (random init), both stages, and a checkpoint whose processor turns
a PIL image into the pixels the model expects."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, ConvNextImageProcessorPil, ViTImageProcessorPil

from cl2cm_hf.data import ImagePathStore
from cl2cm_hf.evaluation.records import flat_metrics
from cl2cm_hf.training.model_setup import scratch_image_processor, scratch_vision_backbone
from cl2cm_hf.training.recipe import load_config, parse_config

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

RECIPE = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "demo_pixels.yaml"
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


@pytest.fixture(scope="module")
def shrunk_run(tmp_path_factory):
    from cl2cm_hf.training.run import train

    out = tmp_path_factory.mktemp("demo_pixels") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        records = train([str(RECIPE), "--output_dir", str(out), *SHRUNK])
    return out, records


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
