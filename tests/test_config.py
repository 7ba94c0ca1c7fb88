"""The run config: YAML validated into typed models, `key=value` overrides into nested dicts and
lists, and one-line errors that name the field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from shrinkthink.config import DEFAULT_CONFIG, ExploreStage, WarmStartStage, dump_config, load_config
from shrinkthink.errors import UserError

SMALL = """\
name: small
model: {kind: tiny, depth: 3}
task: {name: arith, eval_levels: [1, 2], eval_problems: 10}
stages:
  - {name: warm, kind: warmstart, steps: 10, levels: [1, 2]}
  - name: climb
    kind: explore
    steps: 20
    max_level: 3
    learner: {group_size: 4}
"""


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def error_of(path, *overrides: str) -> str:
    with pytest.raises(UserError) as caught:
        load_config(path, list(overrides))
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.skipif(not DEFAULT_CONFIG.is_file(), reason="the embedded quickstart is not written yet")
def test_quickstart_loads() -> None:
    config = load_config()
    assert config.stages and len({s.name for s in config.stages}) == len(config.stages)
    assert load_config(DEFAULT_CONFIG) == config


def test_small_config_loads_with_defaults(small: Path) -> None:
    config = load_config(small)
    assert config.name == "small" and config.seed == 0
    assert config.model.depth == 3 and config.task.eval_levels == [1, 2]
    warm, climb = config.stages
    assert isinstance(warm, WarmStartStage) and isinstance(climb, ExploreStage)
    assert climb.learner.group_size == 4 and climb.learner.name == "grpo"  # the default learner
    assert climb.sampling.max_new_tokens == 64


def test_dumped_config_loads_back_the_same(small: Path, tmp_path: Path) -> None:
    config = load_config(small, ["stages.1.learner.lr=0.01"])
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(config))
    assert load_config(again) == config


def test_overrides_reach_nested_fields_and_list_items(small: Path) -> None:
    config = load_config(small, ["stages.1.steps=5", "model.depth=2", "stages.0.levels=[1, 3]",
                                 "task.options={step_format: carry, max_operand: 20}",
                                 "stages.1.learner.name=rloo", "stages.1.sampling.top_p=0.9",
                                 "seed=7", "name=a=b"])
    assert config.stages[1].steps == 5 and config.model.depth == 2
    assert config.stages[0].levels == [1, 3]
    assert config.task.options == {"step_format": "carry", "max_operand": 20}
    assert config.stages[1].learner.name == "rloo"
    assert config.stages[1].sampling.top_p == 0.9  # a sub-model absent from the YAML is created
    assert config.seed == 7 and config.name == "a=b"


@pytest.mark.parametrize(("override", "field"), [
    ("bogus=1", "bogus"),
    ("stages.1.lr=3", "stages.1.lr"),
    ("stages.1.learner.gropu_size=3", "stages.1.learner.gropu_size"),
    ("model.colour=red", "model.colour"),
])
def test_unknown_field_names_its_path(small: Path, override: str, field: str) -> None:
    assert error_of(small, override) == f"{small}: {field}: unknown field"


@pytest.mark.parametrize(("override", "field", "words"), [
    ("seed=abc", "seed", "integer"),
    ("stages.1.learner.lr=abc", "stages.1.learner.lr", "number"),
    ("model.depth=0", "model.depth", "greater than or equal to 1"),
    ("stages.0.levels=3", "stages.0.levels", "list"),
    ("stages.1.learner.name=ppo", "stages.1.learner.name", "grpo"),
    ("stages.0.random_positions=0", "stages.0.random_positions", "greater than 0"),
])
def test_wrong_type_names_the_field(small: Path, override: str, field: str, words: str) -> None:
    message = error_of(small, override)
    assert message.startswith(f"{small}: {field}: ")
    assert words in message


def test_bad_combinations_are_rejected_naming_the_field(small: Path) -> None:
    assert "model.path is required" in error_of(small, "model.kind=pretrained")
    assert "model.tokenizer: a pretrained model brings its own" in error_of(
        small, "model.kind=pretrained", "model.path=smollm2", "model.tokenizer=bpe")
    assert "max_level (1) is below start_level (2)" in error_of(small, "stages.1.max_level=1", "stages.1.start_level=2")
    assert "stage names must be unique: warm" in error_of(small, "stages.1.name=warm")
    shrink = error_of(small, "stages.1={name: cut, kind: shrink, steps: 5, gate: {patience: 2}}")
    assert shrink.startswith(f"{small}: stages.1") and "gate.patience: a shrink stage" in shrink
    assert "stages.1.gate.patience" in error_of(small, "stages.1.gate.patience=0")


def test_shaping_terms_that_cannot_work_are_rejected_naming_the_field(small: Path) -> None:
    # a ramp from 0 stays at 0
    assert "stages.1.criteria.0.start: Input should be greater than 0" in error_of(
        small, "stages.1.criteria=[{name: length_penalty, start: 0}]")
    # a cap no completion can reach never punishes
    overlong = error_of(small, "stages.1.sampling.max_new_tokens=64",
                        "stages.1.criteria=[{name: overlong, max_tokens: 80}]")
    assert overlong.startswith(f"{small}: stages.1")
    assert "criteria.0.max_tokens (80) is above sampling.max_new_tokens (64)" in overlong
    assert "criteria.0.cache_tokens (40) must be below max_tokens (32)" in error_of(
        small, "stages.1.criteria=[{name: overlong, max_tokens: 32, cache_tokens: 40}]")
    load_config(small, ["stages.1.criteria=[{name: overlong, max_tokens: 64}]"])  # at the cap: fine
    # per-group std scaling makes any lambda an order-one advantage in an all-correct group
    scaled = error_of(small, "stages.1.criteria=[{name: length_penalty}]")
    assert scaled.startswith(f"{small}: stages.1") and "learner.scale_rewards: 'group' rescales criteria.0" in scaled
    for scale in ("batch", "none"):
        load_config(small, ["stages.1.criteria=[{name: length_penalty}]", f"stages.1.learner.scale_rewards={scale}"])


@pytest.mark.parametrize(("override", "words"), [
    ("stages.5.steps=1", "'stages.5.steps': '5' is not an index of a 2-item list"),
    ("stages.first.steps=1", "'first' is not an index"),
    ("model.depth.x=1", "'model.depth' is not a mapping or list"),
    ("nokey", "expected key=value"),
])
def test_bad_override_path(small: Path, override: str, words: str) -> None:
    assert words in error_of(small, override)


def test_bad_files(tmp_path: Path) -> None:
    assert "no such file" in error_of(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nstages: [\n  {name: a\n")
    assert error_of(broken).startswith(f"{broken}:")
    assert "invalid YAML" in error_of(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert "must be a mapping" in error_of(listed)
    no_stages = tmp_path / "none.yaml"
    no_stages.write_text("name: x\n")
    assert error_of(no_stages) == f"{no_stages}: stages: Field required"


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    config = load_config(str(path))
    assert config.stages and config.name


def test_the_icot_quickstart_is_the_quickstart_up_to_its_last_stage() -> None:
    """configs/quickstart-icot.yaml repeats the quickstart's first four stages: they must not drift."""
    quickstart = load_config(None)
    icot = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "quickstart-icot.yaml"))
    assert icot.stages[:-1] == quickstart.stages[:-1]
    assert (icot.model, icot.task, icot.seed, icot.device) == (quickstart.model, quickstart.task, quickstart.seed,
                                                               quickstart.device)
    assert icot.stages[-1].method == "icot" and quickstart.stages[-1].method == "coconut"
    assert quickstart.stages[-1].thought_targets and quickstart.stages[-1].final_decay


def test_overrides_can_name_a_list_item(small: Path) -> None:
    config = load_config(small, ["stages.climb.steps=50", "stages.warm.levels=[1]", "stages.0.steps=3",
                                 "stages.climb.criteria=[{name: overlong, max_tokens: 32}]",
                                 "stages.climb.criteria.overlong.cache_tokens=8"])
    assert config.stages[1].steps == 50 and config.stages[0].levels == [1] and config.stages[0].steps == 3
    assert config.stages[1].criteria[0].cache_tokens == 8  # any list of named mappings, not only stages
    message = error_of(small, "stages.explore.steps=50")
    assert message == "override 'stages.explore.steps': 'explore' is not an index of a 2-item list nor one of its " \
                      "names (warm, climb)"
