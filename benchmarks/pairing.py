"""Which system of a benchmark run is another one "with `lambda_kt: 0`, same everything else", so
that what the distillation term is worth is always read from a matched pair (one copy, used by
every benchmark that reports it)."""

from __future__ import annotations

# Settings that act only through the distillation term (or its teacher embeddings): with
# `lambda_kt: 0` they change nothing, so a system's partner may differ from it in these.
KT_ONLY = frozenset({"lambda_kt", "kt_temperature", "kt_teacher_keys", "kt_teacher_entropy", "kt_student_scale",
                     "kt_queue_size", "precompute_teacher"})


def _lambda_kt(settings: dict, default: float) -> float:
    return float(settings.get("lambda_kt", default))


def lambda_kt_partners(settings_by_system: dict[str, dict], recipe_lambda_kt: float = 1.0) -> dict[str, str]:
    """{system: its partner}: for each system with the distillation term on, the first other system
    with ``lambda_kt: 0`` whose settings are the same apart from `KT_ONLY` (settings: the overrides
    of the common recipe, whose own ``lambda_kt`` is `recipe_lambda_kt`)."""
    def rest(settings: dict) -> dict:
        return {key: value for key, value in settings.items() if key not in KT_ONLY}

    partners = {}
    for name, settings in settings_by_system.items():
        if _lambda_kt(settings, recipe_lambda_kt):
            partner = next((other for other, candidate in settings_by_system.items()
                            if not _lambda_kt(candidate, recipe_lambda_kt) and rest(candidate) == rest(settings)), None)
            if partner is not None:
                partners[name] = partner
    return partners
