"""transformers' own common tests (ModelTesterMixin, ConfigTester) against every model setup:
cross-modal on features `(B, D)`, on frame sequences `(B, T, D)` with `visual_mask`, on a tiny CLIP
vision backbone with images and with videos `(B, T, 3, H, W)`, and cross-lingual (separate towers
are left to test_models.py and the legacy checkpoints, to keep the run short). The test files come
from the source release of the installed transformers (tests/transformers_common/fetch.py, cached
by `make transformers-tests`); the testers follow CLIP's tests/models/clip/test_modeling_clip.py,
and the skips are CLIP's, for CLIP's reasons."""

import json
import unittest

from transformers_common import fetch

fetch.add_to_path_or_skip()

from hf_tests.test_configuration_common import ConfigTester  # noqa: E402 (after the common tests are on sys.path)
from hf_tests.test_modeling_common import ModelTesterMixin  # noqa: E402 (after the common tests are on sys.path)
from transformers_common.testers import CrossLingualTester, CrossModalTester  # noqa: E402 (after the common tests are on sys.path)

from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalConfig, CL2CMCrossModalModel  # noqa: E402 (after the common tests are on sys.path)


def _saved_fields(config, *names) -> dict:
    """Fields as config.json holds them (ConfigTester compares the JSON with its inputs)."""
    saved = json.loads(config.to_json_string())
    return {name: saved[name] for name in names}


class CL2CMTesterMixin(ModelTesterMixin):
    """What CLIPModelTest sets and skips, for the same reasons (a dual encoder)."""

    test_attention_outputs = False  # as CLIPModelTest: attentions are tested per tower (get_*_features tests)
    _is_composite = True

    @unittest.skip(reason="Hidden_states is tested in individual model tests")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="Inputs_embeds is tested in individual model tests")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="Retain_grad is tested in individual model tests")
    def test_retain_grad_hidden_states_attentions(self):
        pass


class CrossModalSetup(CL2CMTesterMixin):
    all_model_classes = (CL2CMCrossModalModel,)
    backbone = video = False
    visual_num_layers = 0

    def setUp(self):
        self.model_tester = CrossModalTester(self, self.backbone, self.video, self.visual_num_layers)
        self.additional_model_inputs = list(self.model_tester.visual_inputs())
        fields = _saved_fields(self.model_tester.get_config(), "text_config", "vision_config", "visual_encoder_type")
        self.config_tester = ConfigTester(self, config_class=CL2CMCrossModalConfig, has_text_modality=False, **fields)

    def test_config(self):
        self.config_tester.run_common_tests()


class CL2CMFeaturesModelTest(CrossModalSetup, unittest.TestCase):
    # Precomputed features carry no pixel_values to read the batch from and no vision_config width.
    skip_test_image_features_output_shape = skip_test_video_features_output_shape = True


class CL2CMFramesModelTest(CrossModalSetup, unittest.TestCase):
    video = True
    visual_num_layers = 1
    skip_test_image_features_output_shape = skip_test_video_features_output_shape = True


class CL2CMPixelImagesModelTest(CrossModalSetup, unittest.TestCase):
    backbone = True


class CL2CMPixelVideosModelTest(CrossModalSetup, unittest.TestCase):
    backbone = video = True
    visual_num_layers = 1


class CL2CMCrossLingualModelTest(CL2CMTesterMixin, unittest.TestCase):
    all_model_classes = (CL2CMCrossLingualModel,)
    additional_model_inputs = ["target_input_ids"]
    # As CLIPModelTest; the common resize test writes inputs_dict["input_ids"], which this model
    # names source_input_ids (test_models.py resizes it).
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = CrossLingualTester(self)
        fields = _saved_fields(self.model_tester.get_config(), "text_config")
        self.config_tester = ConfigTester(self, config_class=CL2CMCrossLingualConfig, has_text_modality=False, **fields)

    def test_config(self):
        self.config_tester.run_common_tests()
