"""Choosing settings across languages (issue 22): a recipe should hold on a language it was not tuned on.

Every candidate is scored by its validation SumR gain over the reference recipe, per language, on
the folds both ran (validation images only, never test). A choice made on one language is checked on
the other: the candidate that language's validation prefers, and what it gains on the other
language. A candidate is adopted only by its **worst** language's gain (the largest worst-language
gain, and only if it is above `margin`); otherwise the reference stays. The mean over languages
never decides, so a setting that helps one language and hurts the other is not taken.
"""

from __future__ import annotations

import statistics


def validation_gains(scores: dict[str, dict[str, dict[int, float]]], reference: str) -> dict[str, dict[str, float]]:
    """{candidate: {lang: mean over shared folds of its validation SumR minus the reference's}} from
    `scores` = {candidate: {lang: {fold: validation SumR}}} (the reference itself included, gain 0)."""
    gains = {}
    for name, by_lang in scores.items():
        gains[name] = {}
        for lang, by_fold in by_lang.items():
            base = scores[reference].get(lang, {})
            folds = [f for f in by_fold if f in base]
            if folds:
                gains[name][lang] = statistics.fmean(by_fold[f] - base[f] for f in folds)
    return gains


def select(scores: dict[str, dict[str, dict[int, float]]], reference: str, langs, margin: float = 0.0) -> dict:
    """The protocol's decisions: ``chosen_on[lang]`` (the candidate `lang`'s validation prefers) with
    ``transfer[lang]`` (its gain on each other language), ``worst`` (each candidate's worst-language
    gain) and ``adopted`` (the best worst-language gain above `margin`, else `reference`)."""
    gains = validation_gains(scores, reference)
    complete = {name: g for name, g in gains.items() if all(lang in g for lang in langs)}
    chosen_on, transfer = {}, {}
    for lang in langs:
        chosen_on[lang] = max(complete, key=lambda name: complete[name][lang])
        transfer[lang] = {other: complete[chosen_on[lang]][other] for other in langs if other != lang}
    worst = {name: min(g[lang] for lang in langs) for name, g in complete.items()}
    best = max(worst, key=worst.get)
    return {"gains": complete, "chosen_on": chosen_on, "transfer": transfer, "worst": worst,
            "adopted": best if worst[best] > margin else reference}


def render_selection(scores: dict, reference: str, langs, margin: float = 0.0) -> list[str]:
    """The protocol's table (candidates by worst-language gain) and its decisions, as markdown lines."""
    decision = select(scores, reference, langs, margin)
    gains, worst = decision["gains"], decision["worst"]
    lines = [f"| candidate | {' | '.join(f'{lang} val gain' for lang in langs)} | worst language |",
             "|---" * (len(langs) + 2) + "|"]
    for name in sorted(worst, key=worst.get, reverse=True):
        lines.append(f"| {name} | " + " | ".join(f"{gains[name][lang]:+.1f}" for lang in langs) + f" | {worst[name]:+.1f} |")
    lines.append("")
    for lang in langs:
        others = ", ".join(f"{other} {gain:+.1f}" for other, gain in decision["transfer"][lang].items())
        lines.append(f"- chosen on {lang} validation: `{decision['chosen_on'][lang]}` (its gain on the other language's "
                     f"validation: {others})")
    lines.append(f"- adopted (largest worst-language gain, above {margin:+.1f}): `{decision['adopted']}`")
    return lines


def scores_from_results(report: dict, tower: str, exclude=("untrained", "english_only", "mt_no_transfer")) -> dict:
    """{system: {lang: {fold: validation SumR}}} of one tower of a benchmark results file (its
    ``validation`` entries ``tower|system|lang|fold``), leaving out the baselines in `exclude` and the
    systems without the distillation term (their settings are another question)."""
    scores = {}
    for key, value in report["validation"].items():
        tower_, system, lang, fold = key.split("|")
        if tower_ == tower and system not in exclude and not system.endswith("no_kt"):
            scores.setdefault(system, {}).setdefault(lang, {})[int(fold)] = value
    return scores


def main(argv=None) -> None:
    """``python benchmarks/selection.py RESULTS.json [--reference cl2cm]``: the protocol on a results
    file's validation SumR, per tower, as markdown."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--reference", default="cl2cm")
    args = parser.parse_args(argv)
    report = json.loads(args.results.read_text())
    for tower in report["towers"]:
        print(f"**{tower}**\n")
        print("\n".join(render_selection(scores_from_results(report, tower), args.reference, report["langs"])) + "\n")


if __name__ == "__main__":
    main()
