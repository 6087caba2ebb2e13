"""transformers' own ProcessorTesterMixin (tests/test_processing_common.py of the installed
release, fetched as in test_transformers_common.py) against both CL2CM processors: text only, and
tokenizer with a CLIP image processor and the CL2CM video processor made from it."""

import unittest

from transformers_common import fetch

fetch.add_to_path_or_skip()

from conftest import build_wordpiece_tokenizer  # noqa: E402 (after the common tests are on sys.path)
from hf_tests.test_processing_common import ProcessorTesterMixin  # noqa: E402 (after the common tests are on sys.path)
from transformers import CLIPImageProcessor  # noqa: E402 (after the common tests are on sys.path)

from cl2cm_hf import CL2CMProcessor, CL2CMTextProcessor, video_processor_for  # noqa: E402 (after the common tests are on sys.path)


class CL2CMTextProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = CL2CMTextProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return build_wordpiece_tokenizer()


class CL2CMProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = CL2CMProcessor
    videos_input_name = "pixel_values"  # what the model's get_video_features reads (with visual_mask)

    @classmethod
    def _setup_tokenizer(cls):
        return build_wordpiece_tokenizer()

    @classmethod
    def _setup_image_processor(cls):
        return CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})

    @classmethod
    def _setup_video_processor(cls):
        return video_processor_for(cls._setup_image_processor(), num_frames=4)
