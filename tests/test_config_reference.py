"""The config reference: every field of every config model has a description, `shrinkthink config`
prints them (and `--defaults` the resolved quickstart), and the committed docs/config.md is what
the generator writes now."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from shrinkthink import config as config_module
from shrinkthink.cli import main
from shrinkthink.config import RunConfig, load_config
from shrinkthink.reference import REFERENCE_COMMAND, config_models, config_reference

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def all_models() -> list[type[BaseModel]]:
    """The models the run config reaches, and any other defined in config.py (a new criterion
    before it joins its union, the stages' shared base)."""
    models = [model for model, _ in config_models()]
    defined = [value for value in vars(config_module).values() if isinstance(value, type)
               and issubclass(value, BaseModel) and value.__module__ == config_module.__name__]
    return models + [model for model in defined if model not in models]


def test_every_field_has_a_description() -> None:
    missing = [f"{model.__name__}.{name}" for model in all_models()
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"fields without a description: {', '.join(missing)}"


def test_the_reference_lists_every_field_of_every_model() -> None:
    markdown, text = config_reference(markdown=True), config_reference()
    for model, _ in config_models():
        assert f"## {model.__name__}\n" in markdown and f"\n{model.__name__}  (at " in text
        for name in model.model_fields:
            assert f"- **`{name}`** (`" in markdown and f"\n  {name}: " in text
    assert "## LoraConfig\n\nAt `model.lora`." in markdown
    assert "WarmStartStage  (at stages[] with kind: warmstart)" in text


def test_docs_config_md_is_current() -> None:
    assert DOCS.is_file() and DOCS.read_text() == config_reference(markdown=True), (
        f"docs/config.md is out of date with src/shrinkthink/config.py; regenerate it: {REFERENCE_COMMAND}")


def test_the_config_command(capsys) -> None:
    assert main(["config"]) == 0
    assert capsys.readouterr().out == config_reference()
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == config_reference(markdown=True)
    assert main(["config", "--defaults"]) == 0
    assert RunConfig.model_validate(yaml.safe_load(capsys.readouterr().out)) == load_config()
