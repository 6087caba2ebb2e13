"""Stub of transformers' tests/generation/test_utils.py (not in the source release): our dual
encoders cannot generate, so the common tests only check that testers do NOT inherit it."""


class GenerationTesterMixin:
    """Replaces the generation tests' mixin; contributes no tests."""
