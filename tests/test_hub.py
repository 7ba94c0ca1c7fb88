"""`model.path` as a Hugging Face hub id, read from a hub cache these tests build themselves (a
tiny model saved in huggingface_hub's `models--org--name/snapshots/<commit>` layout), with no
network: a run by id through the CLI, one error line for an id nowhere to be found, and the
larger-model options (`attn_implementation`, `gradient_checkpointing`) reaching the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants

from shrinkthink.config import LearnerConfig, ModelConfig
from shrinkthink.errors import UserError
from shrinkthink.learners import Learner, supervised_step
from shrinkthink.model import load_pretrained, tiny_policy
from shrinkthink.policy import Policy
from shrinkthink.records import Episode, Problem

MODEL_ID = "shrinkthink-tests/tiny-llama"
CPU = torch.device("cpu")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = f"""\
name: hub
seed: 0
threads: 1
model: {{kind: pretrained, path: {MODEL_ID}}}
task: {{name: arith, options: {{max_operand: 3}}, eval_levels: [1], eval_problems: 4}}
stages:
  - name: climb
    kind: explore
    steps: 2
    max_level: 1
    eval_every: 100
    eval_problems: 4
    checkpoint_every: 100
    learner: {{group_size: 2, problems_per_step: 2}}
    sampling: {{max_new_tokens: 8}}
"""


def build_cache(root: Path, model_id: str = MODEL_ID) -> Path:
    """A hub cache folder holding `model_id` at revision main, as a download would leave it."""
    repo = root / f"models--{model_id.replace('/', '--')}"
    model, tokenizer = tiny_policy(depth=2, seed=0)
    model.save_pretrained(repo / "snapshots" / COMMIT)
    tokenizer.save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    return build_cache(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def cached(hub_cache: Path, monkeypatch) -> Path:
    """This process reads the test cache: huggingface_hub takes HF_HUB_CACHE from the environment
    at import, so the constant itself is what a load looks up."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_cache))
    return hub_cache


def cli(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home"),
           "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "shrinkthink", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_run_by_hub_id_from_the_cache_through_the_cli(hub_cache: Path, tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text(CONFIG)
    run_dir = tmp_path / "run"
    result = cli("run", str(config), "--run-dir", str(run_dir), "--no-progress", cwd=tmp_path, cache=hub_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["stage"] == "climb" and r.get("event") != "stage_end"] == [1, 2]
    assert (run_dir / "checkpoints" / "climb" / "model.safetensors").is_file()


def test_an_id_in_no_cache_is_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text(CONFIG)
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    result = cli("run", str(config), "--run-dir", "out", cwd=tmp_path, cache=empty)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"shrinkthink: error: model.path: '{MODEL_ID}' is not in the Hugging Face cache")
    assert str(empty) in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path, message", [
    ("./missing", "no such file or folder './missing'"),
    ("/no/such/model", "no such file or folder '/no/such/model'"),
    ("weights.gguf", "no such file or folder 'weights.gguf'"),
    ("a/b/c", "no such file or folder 'a/b/c', nor a Hugging Face model id"),
])
def test_a_missing_path_that_is_no_hub_id_says_so(path: str, message: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="^model.path: ") as caught:
        load_pretrained(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_loading_by_id_equals_loading_the_snapshot_folder(cached: Path) -> None:
    by_id, tokenizer = load_pretrained(MODEL_ID)
    folder, _ = load_pretrained(str(next((cached / f"models--{MODEL_ID.replace('/', '--')}" / "snapshots").iterdir())))
    assert tokenizer("12+7").input_ids == tiny_policy(depth=2)[1]("12+7").input_ids
    for (name, a), b in zip(by_id.state_dict().items(), folder.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_bad_attn_implementation_names_its_field(cached: Path) -> None:
    with pytest.raises(UserError, match="^model.attn_implementation: .*nonsense"):
        load_pretrained(MODEL_ID, attn_implementation="nonsense")
    with pytest.raises(UserError, match="^model.attn_implementation: "):
        Policy.from_config(ModelConfig(attn_implementation="nonsense"), CPU)


def checkpointed(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


@pytest.mark.parametrize("kind", ["pretrained", "tiny"])
def test_attention_and_checkpointing_reach_the_model(cached: Path, kind: str) -> None:
    config = ModelConfig(kind=kind, path=MODEL_ID if kind == "pretrained" else None, depth=2,
                         attn_implementation="eager", gradient_checkpointing=True)
    policy = Policy.from_config(config, CPU)
    assert policy.model.config._attn_implementation == "eager"
    assert checkpointed(policy.model)
    plain = Policy.from_config(ModelConfig(kind=kind, path=config.path, depth=2), CPU)
    assert plain.model.config._attn_implementation != "eager" and not checkpointed(plain.model)


def test_a_checkpoint_reloads_with_the_runs_options(cached: Path, tmp_path: Path) -> None:
    policy = Policy.from_config(ModelConfig(kind="pretrained", path=MODEL_ID), CPU)
    policy.save(tmp_path / "saved")
    config = ModelConfig(kind="pretrained", path=MODEL_ID, attn_implementation="eager", gradient_checkpointing=True)
    loaded = Policy.load(tmp_path / "saved", "cpu", config=config)
    assert loaded.model.config._attn_implementation == "eager" and checkpointed(loaded.model)


def gradients(policy: Policy, prompts, targets) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.0)  # step() leaves the weights alone
    policy.model.train()
    supervised_step(policy, optimizer, prompts, targets)
    return {name: p.grad.clone() for name, p in policy.model.named_parameters()}


def test_training_with_checkpointing_recomputes_and_matches(cached: Path, monkeypatch) -> None:
    """A supervised step with checkpointing on recomputes the layers and gets the gradients of one
    without; a GRPO update runs on it too."""
    on = Policy.from_config(ModelConfig(kind="pretrained", path=MODEL_ID, gradient_checkpointing=True), CPU)
    off = Policy.from_config(ModelConfig(kind="pretrained", path=MODEL_ID), CPU)
    prompts = [on.prompt_ids("1+2="), on.prompt_ids("3+3+1=")]
    targets = [on.completion_ids("3"), on.completion_ids("6;7")]
    layer = on.model.model.layers[0]
    calls = []
    recompute = layer._gradient_checkpointing_func
    monkeypatch.setattr(layer, "_gradient_checkpointing_func", lambda *a, **k: calls.append(1) or recompute(*a, **k))
    with_checkpoints, without = gradients(on, prompts, targets), gradients(off, prompts, targets)
    assert calls  # the forward went through the checkpoint, not around it
    for name, grad in without.items():
        torch.testing.assert_close(with_checkpoints[name], grad, atol=1e-6, rtol=1e-5, msg=name)

    problem = Problem(id="p", prompt="1+2=", answer="3", level=1)
    samples = on.sample([prompts[0]] * 2, max_new_tokens=4)
    episodes = [Episode(problem=problem, prompt_ids=prompts[0], completion_ids=ids, logprobs=lp, text="",
                        finished=f, reward=float(i)) for i, (ids, lp, f) in
                enumerate(zip(samples.completion_ids, samples.logprobs, samples.finished))]
    before = {name: p.detach().clone() for name, p in on.model.named_parameters()}
    learner = Learner(on, LearnerConfig(lr=1e-3, warmup_steps=0, group_size=2, problems_per_step=1))
    assert learner.update(episodes, [[0, 1]])["trained_episodes"] == 2
    assert any(not torch.equal(p, before[n]) for n, p in on.model.named_parameters())
