"""LoRA through peft on the tiny model: only the adapters train, our lean decoder applies their
low-rank updates (greedy tokens equal `generate` on the wrapped model), and a checkpoint (base
weights plus `adapter/`) loads back to the same outputs with the adapters still trainable."""

from __future__ import annotations

import pytest
import torch

from shrinkthink.config import LearnerConfig, LoraConfig, ModelConfig
from shrinkthink.learners import Learner
from shrinkthink.learners.batch import completion_logprobs, pack
from shrinkthink.policy import ADAPTER_DIR, Policy
from shrinkthink.records import Episode, Problem

pytest.importorskip("peft")

TEXTS = ["12+7+30=?", "3=?", "99+1+2+3=?", "4+4=?"]


def lora_policy(seed: int = 0) -> Policy:
    config = ModelConfig(kind="tiny", depth=2, lora=LoraConfig(r=4, alpha=8))
    policy = Policy.from_config(config, torch.device("cpu"), seed=seed)
    with torch.no_grad():  # peft starts B at zero (a no-op adapter); make the adapters matter
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return policy


def episodes_for(policy: Policy) -> tuple[list[Episode], list[list[int]]]:
    problem = Problem(id="p", prompt="12+7=?", answer="19")
    prompt = policy.prompt_ids(problem.prompt)
    torch.manual_seed(0)
    samples = policy.sample([prompt] * 4, max_new_tokens=8)
    episodes = [Episode(problem=problem, prompt_ids=prompt, completion_ids=ids, logprobs=lp, text="", finished=f,
                        reward=float(i % 2)) for i, (ids, lp, f) in
                enumerate(zip(samples.completion_ids, samples.logprobs, samples.finished))]
    return episodes, [[0, 1, 2, 3]]


def test_only_the_adapters_train() -> None:
    policy = lora_policy()
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    learner = Learner(policy, LearnerConfig(lr=1e-2, warmup_steps=0, group_size=4, problems_per_step=1))
    assert learner.update(*episodes_for(policy))["trained_episodes"] == 4
    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_lean_decoder_applies_the_adapters() -> None:
    policy = lora_policy()
    prompts = [policy.prompt_ids(t) for t in TEXTS]
    ours = policy.sample(prompts, max_new_tokens=12, greedy=True)
    with policy.model.disable_adapter():
        plain = policy.sample(prompts, max_new_tokens=12, greedy=True)
    assert ours.completion_ids != plain.completion_ids  # the adapters change what is decoded
    for prompt, completion in zip(prompts, ours.completion_ids):
        ids = torch.tensor([prompt])
        out = policy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, eos_token_id=sorted(policy.eos_ids), pad_token_id=policy.pad_id)
        assert completion == out[0, len(prompt):].tolist()[: len(completion)]


def test_checkpoint_reproduces_outputs_and_keeps_adapters_trainable(tmp_path) -> None:
    policy = lora_policy()
    policy.model.eval()
    prompts = [policy.prompt_ids(t) for t in TEXTS]
    completions = policy.sample(prompts, max_new_tokens=10, greedy=True).completion_ids
    policy.save(tmp_path)
    assert (tmp_path / ADAPTER_DIR / "adapter_config.json").is_file()
    assert (tmp_path / "model.safetensors").is_file()

    loaded = Policy.load(tmp_path)
    assert loaded.sample(prompts, max_new_tokens=10, greedy=True).completion_ids == completions
    loaded.model.eval()
    batch = pack(prompts, completions, policy.pad_id, "cpu")
    with torch.no_grad():
        expected = completion_logprobs(policy.model, *batch[:3])
        got = completion_logprobs(loaded.model, *batch[:3])
    assert torch.allclose(expected, got, atol=1e-6)
    # the same trainable parameters in the same order: a resumed optimizer state lines up
    names = lambda p: [n for n, q in p.model.named_parameters() if q.requires_grad]  # noqa: E731
    assert names(loaded) == names(policy)


def test_a_resumed_stage_anchors_kl_to_the_stage_start_adapter(tmp_path) -> None:
    """A LoRA policy's KL reference is the frozen base with the stage-start adapter. The adapter
    alone is written when the stage starts; a stage resumed mid-way loads it into the reference
    instead of anchoring to the adapter it resumes with."""
    from shrinkthink.config import load_config
    from shrinkthink.rundir import RunDir
    from shrinkthink.stages import StageContext
    from shrinkthink.tasks import make_task

    policy = lora_policy()
    config, task, run = load_config(), make_task("arith", {}), RunDir(tmp_path)
    learner = Learner(policy, LearnerConfig(kl_coef=0.1))
    StageContext(config, policy, task, run, 1, "climb").anchor_reference(learner)
    assert not (run.checkpoints / ".climb-reference" / "model.safetensors").exists()  # no second base
    start = {n: p.clone() for n, p in policy.model.named_parameters()}
    with torch.no_grad():  # the stage trains the adapter, then the run crashes
        for name, p in policy.model.named_parameters():
            if "lora_" in name:
                p.add_(0.5)
    resumed = Learner(policy, LearnerConfig(kl_coef=0.1))  # a copy of the policy it resumes with
    StageContext(config, policy, task, run, 1, "climb", resume_state={"stage_step": 2}).anchor_reference(resumed)
    reference = dict(resumed.reference.named_parameters())
    assert all(torch.equal(reference[n], p) for n, p in start.items())
    assert not all(torch.equal(q, start[n]) for n, q in policy.model.named_parameters())
