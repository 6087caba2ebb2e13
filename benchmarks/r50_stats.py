"""The Multi30K benchmark's paired statistics: per-query test ranks as saved with the results, and the
paired differences between systems (per fold, and pooled over folds with a paired bootstrap interval,
`cl2cm_hf.evaluation.bootstrap`) that the results page and the goal check read."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from cl2cm_hf.evaluation.bootstrap import concat_hits, item_hits, paired_bootstrap

GOAL_LEAD = 5.0  # CL2CM minus translation-only, SumR, in every tower x language cell (issue 22)
GOAL_TERM = 3.0  # what the distillation term is worth in the adopted recipe
RESAMPLES = 10_000


def rank_lists(evaluator, lang: str, ranks) -> dict:
    """One language's test ranks in a saveable form: ``t2v`` per query, ``item`` (each query's visual
    item, an index into ``v2t``) and ``v2t`` per visual item with a query."""
    _, ids = evaluator.by_lang[lang]
    gallery = {vid: i for i, vid in enumerate(evaluator.gallery_ids)}
    item_of = {int(g): i for i, g in enumerate(ranks.v2t_index)}
    return {"t2v": ranks.t2v.tolist(), "item": [item_of[gallery[v]] for v in ids], "v2t": ranks.v2t.tolist()}


def ranks_path(out: Path) -> Path:
    return out.parent / f"{out.name}_ranks.json"


def load_ranks(out: Path) -> dict:
    path = ranks_path(out)
    return json.loads(path.read_text()) if path.exists() else {}


def sumr_by_fold(rows: list[dict], tower: str, system: str, lang: str, folds_only: bool = False) -> dict:
    """{fold: SumR} of one tower x system x lang (with the "mean"/"std" rows unless `folds_only`)."""
    return {r["fold"]: r["sumr"] for r in rows if (r["tower"], r["system"], r["lang"]) == (tower, system, lang)
            and (isinstance(r["fold"], int) or not folds_only)}


def pooled_difference(ranks: dict, tower: str, system: str, reference: str, lang: str, folds):
    """SumR(system) - SumR(reference) over the test queries of `folds` pooled, with its 95% paired
    bootstrap interval (resampled within each fold); None unless both have ranks on every fold."""
    keys = [(f"{tower}|{system}|{lang}|{f}", f"{tower}|{reference}|{lang}|{f}") for f in folds]
    if not keys or not all(a in ranks and b in ranks for a, b in keys):
        return None
    hits = lambda key: item_hits(ranks[key]["t2v"], ranks[key]["item"], ranks[key]["v2t"])  # noqa: E731
    own = [hits(a) for a, _ in keys]
    strata = np.concatenate([np.full(h.v2t_hits.size, i) for i, h in enumerate(own)])
    return paired_bootstrap(concat_hits(own), concat_hits([hits(b) for _, b in keys]), strata, RESAMPLES)


def paired_differences(report: dict, ranks: dict, reference_of, title: str, text: str) -> list[str]:
    """A markdown section: per tower, language and system, its test SumR minus that of
    `reference_of(system)` (None: no row): per fold (mean ± std, folds ahead) and pooled over the
    folds' queries with a 95% paired bootstrap interval."""
    rows = report["rows"]
    lines = ["", title, "", text, "",
             "| tower | lang | system | reference | mean difference | folds ahead | pooled [95% interval] |",
             "|---|---|---|---|---|---|---|"]
    for tower in report["towers"]:
        for lang in report["langs"]:
            for system in report["systems"]:
                reference = reference_of(system)
                base = sumr_by_fold(rows, tower, reference, lang, folds_only=True) if reference else {}
                own = sumr_by_fold(rows, tower, system, lang, folds_only=True)
                folds = [f for f in own if f in base]
                if not folds:
                    continue
                diffs = [own[f] - base[f] for f in folds]
                spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                interval = pooled_difference(ranks, tower, system, reference, lang, folds)
                pooled = f"{interval.estimate:+.1f} [{interval.low:+.1f}, {interval.high:+.1f}]" if interval else "-"
                lines.append(f"| {tower} | {lang} | {system} | {reference} | {statistics.fmean(diffs):+.1f} ± {spread:.1f} | "
                             f"{sum(d > 0 for d in diffs)}/{len(diffs)} | {pooled} |")
    return lines


def goal_check(report: dict, ranks: dict, partner: str | None) -> list[str]:
    """Issue 22's goal per tower x language: `cl2cm` ahead of `mt_no_transfer` by >= GOAL_LEAD with the
    interval above 0, and the distillation term (`cl2cm` minus `partner`) >= GOAL_TERM."""
    lines = ["", "## Goal check (pooled test queries, 95% paired bootstrap)", "",
             f"Goal: `cl2cm` ahead of `mt_no_transfer` by at least +{GOAL_LEAD:.0f} SumR with the interval above 0, and "
             f"the distillation term (`cl2cm` minus `{partner}`) worth at least +{GOAL_TERM:.0f}, in every cell.", "",
             "| tower | lang | cl2cm − mt_no_transfer | lead met | distillation term | term met |", "|---|---|---|---|---|---|"]
    fmt = lambda i: f"{i.estimate:+.1f} [{i.low:+.1f}, {i.high:+.1f}]" if i else "-"  # noqa: E731
    for tower in report["towers"]:
        for lang in report["langs"]:
            lead = pooled_difference(ranks, tower, "cl2cm", "mt_no_transfer", lang, report["folds"])
            term = pooled_difference(ranks, tower, "cl2cm", partner, lang, report["folds"]) if partner else None
            lead_met = "yes" if lead and lead.estimate >= GOAL_LEAD and lead.low > 0 else "no"
            term_met = "yes" if term and term.estimate >= GOAL_TERM else "no"
            lines.append(f"| {tower} | {lang} | {fmt(lead)} | {lead_met} | {fmt(term)} | {term_met} |")
    return lines
