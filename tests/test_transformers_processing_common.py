"""transformers' own ProcessorTesterMixin (tests/test_processing_common.py of the installed
release, fetched as in test_transformers_common.py) against both CL2CM processors: text only, and
tokenizer with a CLIP image processor."""

import sys
import unittest

import pytest
from transformers_common import fetch

try:
    sys.path.insert(0, str(fetch.fetch()))
except Exception as err:
    pytest.skip(
        f"transformers {fetch.VERSION}'s common tests are not cached in {fetch.CACHE} and could not be fetched "
        f"({type(err).__name__}: {err}); run `make transformers-tests` with network access",
        allow_module_level=True,
    )

from conftest import build_wordpiece_tokenizer
from hf_tests.test_processing_common import ProcessorTesterMixin
from transformers import CLIPImageProcessor

from cl2cm_hf import CL2CMProcessor, CL2CMTextProcessor


class CL2CMTextProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = CL2CMTextProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return build_wordpiece_tokenizer()


class CL2CMProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = CL2CMProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return build_wordpiece_tokenizer()

    @classmethod
    def _setup_image_processor(cls):
        return CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
