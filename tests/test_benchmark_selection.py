"""benchmarks/selection.py: a setting is adopted by its worst language's validation gain, never the mean."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.selection import render_selection, scores_from_results, select, validation_gains


def _scores(**per_variant):
    """{name: (de, fr)} per fold 0 and 1, the second fold 2 higher for everyone."""
    return {name: {"de": {0: de, 1: de + 2}, "fr": {0: fr, 1: fr + 2}} for name, (de, fr) in per_variant.items()}


def test_the_worst_language_decides():
    scores = _scores(ref=(100, 100), one_sided=(130, 95), both=(104, 103), worse=(99, 98))
    decision = select(scores, "ref", ["de", "fr"])
    # The mean would take one_sided (+12.5); it loses 5 on French, so the setting that helps both is adopted.
    assert decision["chosen_on"] == {"de": "one_sided", "fr": "both"}
    assert decision["transfer"]["de"] == {"fr": -5} and decision["transfer"]["fr"] == {"de": 4}
    assert decision["worst"]["one_sided"] == -5 and decision["adopted"] == "both"
    # Nothing clears the margin: the reference stays.
    assert select(scores, "ref", ["de", "fr"], margin=5)["adopted"] == "ref"
    lines = render_selection(scores, "ref", ["de", "fr"])
    assert lines[2].startswith("| both | +4.0 | +3.0 | +3.0 |") and "adopted" in lines[-1] and "`both`" in lines[-1]


def test_gains_use_only_the_folds_both_ran():
    scores = {"ref": {"de": {0: 100, 1: 120}}, "new": {"de": {1: 125}}}
    assert validation_gains(scores, "ref") == {"ref": {"de": 0}, "new": {"de": 5}}
    # A candidate missing a language is not a candidate.
    assert "new" not in select({**scores, "ref": {"de": {1: 120}, "fr": {1: 90}}}, "ref", ["de", "fr"])["gains"]


def test_scores_come_from_a_results_files_validation_entries():
    report = {"validation": {"e5|cl2cm|de|0": 300.0, "e5|cl2cm_q512|de|0": 310.0, "e5|cl2cm_no_kt|de|0": 290.0,
                             "e5|mt_no_transfer|de|0": 280.0, "minilm|cl2cm|de|0": 200.0}}
    assert scores_from_results(report, "e5") == {"cl2cm": {"de": {0: 300.0}}, "cl2cm_q512": {"de": {0: 310.0}}}
