"""benchmarks/pairing.py: each system's "lambda_kt 0, same everything else" partner."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pairing import lambda_kt_partners


def test_partners_differ_only_in_settings_of_the_distillation_term():
    systems = {
        "mt_no_transfer": {"stage": "cm", "lambda_kt": 0.0},
        "cl2cm": {},
        "cl2cm_no_kt": {"lambda_kt": 0},
        "cl2cm_item_q512": {"kt_teacher_keys": "item", "kt_queue_size": 512},
        "cl2cm_nb8": {"kt_neighbour_group_size": 8},  # changes the batches: needs its own partner
        "cl2cm_mt0": {"lambda_mt": 0},
        "cl2cm_mt0_no_kt": {"lambda_mt": 0, "lambda_kt": 0},
        "cl2cm_item_mt0": {"kt_teacher_keys": "item", "lambda_mt": 0, "precompute_teacher": True},
    }
    assert lambda_kt_partners(systems) == {
        "cl2cm": "cl2cm_no_kt", "cl2cm_item_q512": "cl2cm_no_kt", "cl2cm_mt0": "cl2cm_mt0_no_kt", "cl2cm_item_mt0": "cl2cm_mt0_no_kt",
    }
    # A recipe without the term: nothing to pair.
    assert lambda_kt_partners({"a": {}, "b": {"lambda_kt": 0}}, recipe_lambda_kt=0.0) == {}
