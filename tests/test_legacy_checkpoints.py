"""Checkpoints saved before the transformers-5 renames (issue 18) still load, through our classes
and through AutoModel, and give the embeddings they gave then (tests/fixtures/legacy_checkpoints:
config and weights of each kind, with expected.safetensors holding the fixed inputs and embeddings;
written on main's code of the time by make_fixtures.py, see commit 63b362a)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from cl2cm_hf import CL2CMCrossLingualModel, CL2CMCrossModalModel

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_checkpoints"
EXPECTED = load_file(FIXTURES / "expected.safetensors")


def embeddings(model, name: str) -> dict[str, torch.Tensor]:
    """The embeddings the fixture recorded for `name`, computed by `model` today."""
    ids, mask, frames = EXPECTED["input_ids"], EXPECTED["attention_mask"], EXPECTED["visual_mask"]
    with torch.no_grad():
        if name.startswith("cross_lingual"):
            return {
                "source": model.get_text_features(ids, mask).pooler_output,
                "target": model.get_text_features(ids, mask, language="target").pooler_output,
            }
        if name == "features":
            image = model.get_image_features(visual_features=EXPECTED["image_features"])
            video = model.get_video_features(visual_features=EXPECTED["video_features"], visual_mask=frames)
        else:
            image = model.get_image_features(pixel_values=EXPECTED["images"])
            video = model.get_video_features(pixel_values=EXPECTED["videos"], visual_mask=frames)
        text = model.get_text_features(ids, mask)
        return {"text": text.pooler_output, "image": image.pooler_output, "video": video.pooler_output}


@pytest.mark.parametrize("name", ["cross_lingual", "cross_lingual_separate", "features", "backbone"])
@pytest.mark.parametrize("loader", ["class", "auto"])
def test_checkpoints_saved_before_the_renames_give_the_same_embeddings(name, loader):
    cls = CL2CMCrossLingualModel if name.startswith("cross_lingual") else CL2CMCrossModalModel
    model = (cls if loader == "class" else AutoModel).from_pretrained(FIXTURES / name).eval()
    assert isinstance(model, cls)
    got = embeddings(model, name)
    assert got, name
    for key, value in got.items():
        torch.testing.assert_close(value, EXPECTED[f"{name}.{key}"], rtol=0, atol=1e-6, msg=f"{name}.{key}")
