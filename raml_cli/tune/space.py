"""The search space of ``raml tune``: which options vary, over which ranges.

A space is a list of :class:`Parameter`; ``--space FILE.json`` gives one as a JSON object
keyed by option name::

    {"lr": {"low": 1e-4, "high": 2e-4, "log": true},
     "lambda1": {"low": 0.6, "high": 0.8},
     "augs": {"low": 2, "high": 8},
     "mode": {"choices": ["aug", "regression"]}}

A range is sampled log-uniformly with ``"log": true``, else uniformly; an option whose
type is an integer gets integers. ``choices`` lists the values of a categorical option.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from raml_cli.errors import InputError


@dataclass(frozen=True)
class Parameter:
    """One searched option: a numeric range (``low``..``high``, ``log``) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        """The value of this option in an optuna ``trial``."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' log' if self.log else ''}"

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


#: The reference's distillation search (optimize.py of pavelsuma/raml): lr log-uniform in
#: [1e-4, 2e-4], lambda1 and lambda2 in [0.6, 0.8].
STUDENT_SPACE = (Parameter("lr", 1e-4, 2e-4, log=True), Parameter("lambda1", 0.6, 0.8),
                 Parameter("lambda2", 0.6, 0.8))
#: The reference searched no teacher options; ours: the learning rate around the default
#: (log-uniform over a decade) and the triplet margin.
TEACHER_SPACE = (Parameter("lr", 3e-5, 3e-4, log=True), Parameter("margin", 0.3, 1.0))


def default_space(role: str) -> list[Parameter]:
    """The default space of a training whose role is ``teacher`` or ``student``."""
    return list(STUDENT_SPACE if role == "student" else TEACHER_SPACE)


def load_space(path: Path, config_class: Any) -> list[Parameter]:
    """Read ``--space FILE.json`` (module docstring) for options of ``config_class``."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"The search space {path} cannot be read as JSON ({err}). Give a JSON "
                         'object such as {"lr": {"low": 1e-4, "high": 2e-4, "log": true}}.') \
            from None
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"The search space {path} must be a non-empty JSON object of options, "
                         'e.g. {"lr": {"low": 1e-4, "high": 2e-4, "log": true}}.')
    return [parse_parameter(name, spec, config_class, path) for name, spec in raw.items()]


def parse_parameter(name: str, spec: Any, config_class: Any, source: Any) -> Parameter:
    """One entry of a space file, checked against the option's type."""
    allowed = config_class.presettable_options()
    if name not in allowed:
        raise InputError(f"The search space {source} names {name!r}, which is not an option "
                         f"this training can vary. Options: {', '.join(sorted(allowed))}.")
    kind = str({f.name: f.type for f in fields(config_class)}[name])
    if not isinstance(spec, dict):
        raise InputError(f"In the search space {source}, {name!r} must be an object with "
                         '"low" and "high" (and optionally "log": true) or "choices".')
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise InputError(f"In the search space {source}, {name!r} has \"choices\" that are "
                             "not a non-empty list.")
        return Parameter(name, choices=tuple(choices))
    low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
    numeric = kind.startswith(("int", "float"))
    ok = (numeric and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                          and math.isfinite(v) for v in (low, high)) and low < high
          and (not log or low > 0))
    if not ok:
        hint = "" if numeric else ', or "choices" (the option is not numeric)'
        raise InputError(
            f"In the search space {source}, {name!r} needs numbers \"low\" < \"high\" (positive "
            f"with \"log\": true){hint}; got {json.dumps(spec)}.")
    integer = kind.startswith("int")
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise InputError(f"In the search space {source}, {name!r} is an integer option: give "
                         f"integer bounds, got {low} and {high}.")
    return Parameter(name, float(low), float(high), log=log, integer=integer)


__all__ = ["Parameter", "STUDENT_SPACE", "TEACHER_SPACE", "default_space", "load_space"]
