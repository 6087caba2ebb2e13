"""Model testers for transformers' common tests, modelled on CLIP's `CLIPModelTester` (tests/models/
clip/test_modeling_clip.py): a text tester, a vision tester (images) and a video tester (frame
sequences), each giving the inputs of one tower, and one tester per setup that joins them."""

import torch
from transformers import BertConfig, CLIPVisionConfig

from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossModalConfig

BATCH = 7  # the eager/sdpa test pads smaller batches to 7 rows with random values, masks included
FRAMES = 3
FEATURE_DIM = 24


def _floats(shape) -> torch.Tensor:
    return torch.rand(shape)


def _frame_mask() -> torch.Tensor:
    """Every row has at least one frame; some rows are padded."""
    return (torch.arange(FRAMES)[None, :] < torch.tensor([FRAMES - i % FRAMES for i in range(BATCH)])[:, None]).long()


class TextTester:
    def __init__(self, seq_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4):
        self.batch_size, self.seq_length, self.vocab_size = BATCH, seq_length, vocab_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = hidden_size, num_hidden_layers, num_attention_heads

    def get_config(self) -> BertConfig:
        return BertConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=37, max_position_embeddings=64,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = torch.randint(1, self.vocab_size, (self.batch_size, self.seq_length))
        attention_mask = torch.ones_like(input_ids)
        for row in range(1, self.batch_size):  # right padding, as CLIP's text tester
            attention_mask[row, self.seq_length - row % (self.seq_length - 1):] = 0
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class FeaturesTester:
    """Precomputed features: `(B, D)` images or `(B, T, D)` frames with `visual_mask`."""

    def __init__(self, video: bool, num_hidden_layers: int):
        self.batch_size, self.video, self.num_hidden_layers = BATCH, video, num_hidden_layers

    def prepare_config_and_inputs_for_common(self):
        if not self.video:
            return None, {"visual_features": _floats((BATCH, FEATURE_DIM))}
        return None, {"visual_features": _floats((BATCH, FRAMES, FEATURE_DIM)), "visual_mask": _frame_mask()}


class PixelTester:
    """A tiny CLIP vision backbone on `(B, 3, H, W)` images or `(B, T, 3, H, W)` frames."""

    def __init__(self, video: bool, image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4):
        self.batch_size, self.video, self.image_size, self.patch_size = BATCH, video, image_size, patch_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = hidden_size, num_hidden_layers, num_attention_heads
        self.seq_length = (image_size // patch_size) ** 2 + 1

    def get_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            image_size=self.image_size, patch_size=self.patch_size, hidden_size=self.hidden_size, intermediate_size=37,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads, projection_dim=16,
        )

    def prepare_config_and_inputs_for_common(self):
        if not self.video:
            return self.get_config(), {"pixel_values": _floats((BATCH, 3, self.image_size, self.image_size))}
        pixels = _floats((BATCH, FRAMES, 3, self.image_size, self.image_size))
        return self.get_config(), {"pixel_values": pixels, "visual_mask": _frame_mask()}


class CrossModalTester:
    """One cross-modal setup: `visual_encoder_type` and whether `forward` sees images or videos."""

    def __init__(self, parent, backbone: bool, video: bool, visual_num_layers: int = 0, is_training=True):
        self.parent, self.backbone, self.video, self.is_training = parent, backbone, video, is_training
        self.batch_size = BATCH
        self.visual_num_layers = visual_num_layers
        self.text_model_tester = TextTester()
        tester = PixelTester if backbone else FeaturesTester
        layers = {} if backbone else {"num_hidden_layers": visual_num_layers}
        self.vision_model_tester = tester(video=False, **layers)
        self.video_model_tester = tester(video=True, **layers)

    def get_config(self) -> CL2CMCrossModalConfig:
        visual = (
            {"visual_encoder_type": "backbone", "vision_config": self.vision_model_tester.get_config().to_dict()}
            if self.backbone
            else {"visual_encoder_type": "features", "visual_feature_dim": FEATURE_DIM, "visual_hidden_size": 32}
        )
        return CL2CMCrossModalConfig(
            text_config=self.text_model_tester.get_config().to_dict(), projection_dim=16,
            visual_num_layers=self.visual_num_layers, visual_num_heads=4, visual_max_frames=8, **visual,
        )

    def visual_inputs(self) -> dict:
        tester = self.video_model_tester if self.video else self.vision_model_tester
        return tester.prepare_config_and_inputs_for_common()[1]

    def prepare_config_and_inputs_for_common(self):
        _, inputs = self.text_model_tester.prepare_config_and_inputs_for_common()
        return self.get_config(), {**inputs, **self.visual_inputs(), "return_loss": True}


class CrossLingualTester:
    def __init__(self, parent, is_training=True):
        self.parent, self.is_training = parent, is_training
        self.batch_size = BATCH
        self.text_model_tester = TextTester()

    def get_config(self) -> CL2CMCrossLingualConfig:
        return CL2CMCrossLingualConfig(
            text_config=self.text_model_tester.get_config().to_dict(), projection_dim=16
        )

    def prepare_config_and_inputs_for_common(self):
        _, source = self.text_model_tester.prepare_config_and_inputs_for_common()
        _, target = self.text_model_tester.prepare_config_and_inputs_for_common()
        inputs = {
            "source_input_ids": source["input_ids"], "source_attention_mask": source["attention_mask"],
            "target_input_ids": target["input_ids"], "target_attention_mask": target["attention_mask"],
        }
        return self.get_config(), {**inputs, "return_loss": True}
