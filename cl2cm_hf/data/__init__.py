"""Data layer of cl2cm-hf: row schemas, readers (Multi30K, NRCCR, tables, the offline real
benchmark), visual stores, collators, the built-in demo world and its tokenizer.

Every loader returns ``datasets.Dataset``/``DatasetDict`` with the row types of `schemas`.
"""

from cl2cm_hf.data.badrows import ON_BAD_ROW, SKIPPED_ROWS_FILE, RowPolicy, SkippedRows, report_skipped_rows
from cl2cm_hf.data.collators import PairCollator, TextCollator, VisualCollator
from cl2cm_hf.data.demo_render import render_scene, render_video
from cl2cm_hf.data.demo_world import DemoWorld, build_demo_world
from cl2cm_hf.data.features import MissingVisualIdError, NonFiniteFeatureError, VisualFeatureStore
from cl2cm_hf.data.image_paths import ImagePathStore
from cl2cm_hf.data.multi30k import load_multi30k, multi30k_captions, multi30k_image_ids, multi30k_pairs, multi30k_queries
from cl2cm_hf.data.multi30k_r50 import load_multi30k_r50, multi30k_r50_fold
from cl2cm_hf.data.nrccr import load_nrccr_captions, nrccr_pairs, nrccr_queries
from cl2cm_hf.data.schemas import (
    CAPTION_FEATURES,
    PAIR_FEATURES,
    PAIR_FEATURES_WITH_CAPTION_ID,
    QUERY_FEATURES,
    DataFormatError,
    make_pairs,
    make_queries,
    validate_pairs,
    validate_queries,
    validate_rows,
)
from cl2cm_hf.data.splits import RetrievalData, kfold_visual_ids, select_visual
from cl2cm_hf.data.stores import open_visual_store
from cl2cm_hf.data.tables import load_pairs, load_queries
from cl2cm_hf.data.tokenizer import train_demo_tokenizer

__all__ = [
    "ON_BAD_ROW",
    "SKIPPED_ROWS_FILE",
    "RowPolicy",
    "SkippedRows",
    "report_skipped_rows",
    "CAPTION_FEATURES",
    "PAIR_FEATURES",
    "PAIR_FEATURES_WITH_CAPTION_ID",
    "QUERY_FEATURES",
    "DataFormatError",
    "DemoWorld",
    "ImagePathStore",
    "MissingVisualIdError",
    "NonFiniteFeatureError",
    "PairCollator",
    "RetrievalData",
    "TextCollator",
    "VisualCollator",
    "VisualFeatureStore",
    "build_demo_world",
    "kfold_visual_ids",
    "load_multi30k",
    "load_multi30k_r50",
    "load_nrccr_captions",
    "load_pairs",
    "load_queries",
    "make_pairs",
    "make_queries",
    "open_visual_store",
    "multi30k_captions",
    "multi30k_image_ids",
    "multi30k_pairs",
    "multi30k_queries",
    "multi30k_r50_fold",
    "nrccr_pairs",
    "nrccr_queries",
    "render_scene",
    "render_video",
    "select_visual",
    "train_demo_tokenizer",
    "validate_pairs",
    "validate_queries",
    "validate_rows",
]
