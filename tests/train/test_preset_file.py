"""--preset FILE.json: a JSON object of options (e.g. raml tune's best.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raml_cli.errors import InputError
from raml_cli.train.options import DistillConfig, TeacherConfig


def test_a_preset_file_sets_options_and_the_users_still_win(tmp_path: Path) -> None:
    preset = tmp_path / "best.json"
    preset.write_text(json.dumps({"lr": 3e-4, "margin": 0.4, "epochs": 7}))
    config = TeacherConfig.from_options("toy", preset=str(preset), epochs=2)
    assert (config.lr, config.margin, config.epochs) == (3e-4, 0.4, 2)
    assert config.preset == str(preset)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "one JSON object"),
    ('{"lr": 1e-4, "colour": 3}', "sets colour"),
    ('{"output": "x.safetensors"}', "sets output"),
])
def test_a_bad_preset_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    preset = tmp_path / "p.json"
    preset.write_text(text)
    with pytest.raises(InputError, match=message):
        TeacherConfig.from_options("toy", preset=str(preset))


def test_an_unknown_preset_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Choose: paper, or give the path of a JSON file"):
        TeacherConfig.from_options("toy", preset=str(tmp_path / "missing.json"))


def test_distill_cannot_preset_its_teacher(tmp_path: Path) -> None:
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"teacher": "other.safetensors"}))
    with pytest.raises(InputError, match="sets teacher"):
        DistillConfig.from_options(Path("t.safetensors"), 64, preset=str(preset))
