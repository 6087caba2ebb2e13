"""What a setting allows: `Allowed` (a range, choices, non-blank text, language codes) declared next to
each field as ``metadata={"allowed": ...}``, and the check that refuses a value outside it, naming the
key, the value and what is allowed."""

import dataclasses
import math
from dataclasses import dataclass

from cl2cm_hf.blank_text import is_blank
from cl2cm_hf.data.schemas import language_code_problem
from cl2cm_hf.errors import CL2CMError


@dataclass(frozen=True)
class Allowed:
    """The values a setting may take. Numbers: finite and within ``low``..``high`` (an open end
    excluded); `choices`: one of these; `language_code`: see `cl2cm_hf.data.schemas.LANGUAGE_CODE`;
    `nonblank`: text that is not blank (`cl2cm_hf.data.schemas.is_blank`: an empty path would mean
    the working directory);
    a list: at least `min_items` items, each allowed by the rest. None (an unset optional) passes."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    language_code: bool = False
    nonblank: bool = False
    min_items: int | None = None
    why: str = ""

    def problem(self, value) -> str | None:
        """What is wrong with `value`, or None."""
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            if self.min_items is not None and len(value) < self.min_items:
                return f"expected at least {self.min_items} item(s)"
            problems = [p for p in (self.problem(item) for item in value) if p]
            return problems[0] if problems else None
        if self.choices:
            return None if value in self.choices else f"expected one of {list(self.choices)}"
        if self.language_code:
            return language_code_problem(value)
        if self.nonblank:
            return "expected a non-empty path or name" if not isinstance(value, str) or is_blank(value) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return f"expected a finite number ({self.describe()})"
            return None if self._in_range(value) else f"expected {self.describe()}"
        return None

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.low is None and self.high is None:
            text = "a finite number"
        elif self.high is None:
            text = f"a number {'>' if self.low_open else '>='} {self.low}"
        elif self.low is None:
            text = f"a number {'<' if self.high_open else '<='} {self.high}"
        else:
            text = f"a number in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"{text} ({self.why})" if self.why else text


def at_least(low: float, why: str = "") -> Allowed:
    return Allowed(low=low, why=why)


def above(low: float, why: str = "") -> Allowed:
    return Allowed(low=low, low_open=True, why=why)


def one_of(*choices) -> Allowed:
    return Allowed(choices=choices)


LANGUAGE_CODES = Allowed(language_code=True, min_items=1)
NAME = Allowed(nonblank=True)  # a path, hub id or name: None (unset) or non-blank text


def check_value(key: str, value, allowed: Allowed | None, source: str) -> None:
    problem = allowed.problem(value) if allowed is not None else None
    if problem:
        raise CL2CMError(f"{source}: key {key}={value!r} is not allowed; {problem}")


def check_allowed(settings) -> None:
    """Refuse a field of the argument dataclass `settings` whose value its `Allowed` excludes."""
    for f in dataclasses.fields(settings):
        if "allowed" in f.metadata:
            check_value(f.name, getattr(settings, f.name), f.metadata["allowed"], type(settings).__name__)


# Ranges of the Trainer settings the recipes use (TrainingArguments' own fields carry none).
TRAINING_ALLOWED = {
    "output_dir": NAME,
    "per_device_train_batch_size": at_least(1),
    "per_device_eval_batch_size": at_least(1),
    "gradient_accumulation_steps": at_least(1),
    "eval_accumulation_steps": at_least(1),
    "num_train_epochs": above(0),
    "max_steps": at_least(-1, "-1: use num_train_epochs"),
    "learning_rate": above(0),
    "weight_decay": at_least(0),
    "warmup_steps": at_least(0, "below 1: a fraction of the steps"),
    "max_grad_norm": at_least(0),
    "adam_beta1": Allowed(0, 1, high_open=True),
    "adam_beta2": Allowed(0, 1, high_open=True),
    "adam_epsilon": above(0),
    "label_smoothing_factor": Allowed(0, 1, high_open=True),
    "logging_steps": above(0),
    "eval_steps": above(0),
    "save_steps": above(0),
    "save_total_limit": at_least(1),
    "seed": at_least(0),
    "data_seed": at_least(0),
    "dataloader_num_workers": at_least(0),
    "dataloader_prefetch_factor": at_least(1),
    "eval_delay": at_least(0),
}
