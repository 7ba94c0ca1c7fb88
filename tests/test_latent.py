"""The latent stage: COCONUT's hidden-state feedback with a KV cache equals recomputing the whole
sequence; the curriculum, its mixing of stages and loss masks on a hand-made example; iCoT's removal
schedule and smoothing distribution; a latent policy generates (never writing its markers), saves
and loads; and a short CLI run (warm start, then a latent stage) trains, logs, summarises and
resumes."""

from __future__ import annotations

import json
import math
import random
from unittest.mock import patch

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file
from test_pipeline import cli, crash_in, metric_lines, step_keys

from shrinkthink import rollout
from shrinkthink.config import LatentStage, load_config
from shrinkthink.latent import coconut, icot
from shrinkthink.latent.passes import LlamaPasses
from shrinkthink.model import tiny_policy
from shrinkthink.pipeline import run_pipeline
from shrinkthink.policy import Policy
from shrinkthink.stages.latent import lr_factor


@pytest.fixture
def tiny():
    model, tokenizer = tiny_policy(depth=2, seed=0)
    tokens = coconut.add_latent_tokens(model, tokenizer)
    model.eval()
    return model, tokenizer, tokens


def recompute_logits(model, ids: torch.Tensor, attention: torch.Tensor, thought_id: int,
                     thought_norm: float | None = None) -> torch.Tensor:
    """The definition, no cache: fill each thought from a full forward pass over everything
    before it (rescaled to `thought_norm` when given), then run the whole sequence once more."""
    embeds = model.get_input_embeddings()(ids).clone()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    for col in range(ids.shape[1]):
        rows = ids[:, col] == thought_id
        if rows.any():
            out = model(inputs_embeds=embeds[:, :col], attention_mask=attention[:, :col],
                        position_ids=positions[:, :col], output_hidden_states=True)
            hidden = out.hidden_states[-1][rows, -1]
            if thought_norm is not None:
                hidden = hidden / hidden.norm(dim=-1, keepdim=True) * thought_norm
            embeds[rows, col] = hidden
    return model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions).logits


# --- COCONUT --------------------------------------------------------------------------------------
@pytest.mark.parametrize("thought_norm", [None, 0.7])
@pytest.mark.parametrize("use_cache", [True, False], ids=["model-forward", "lean-passes"])
def test_feedback_with_cache_equals_full_recompute(tiny, thought_norm, use_cache):
    model, tokenizer, tokens = tiny
    # rows with 3, 1 and 0 thoughts, different prompt lengths, aligned on <bot> as in training
    rows = [[5, 6, 7, tokens.bot] + [tokens.thought] * 3 + [tokens.eot, 20, 21],
            [9, 10, 11, 12, 13, tokens.bot, tokens.thought, tokens.eot, 30, 31, 32],
            [14, tokens.bot, tokens.eot, 40, 41]]
    anchors = [r.index(tokens.bot) for r in rows]
    ids, attention, _ = coconut.pad_aligned(rows, [[True] * len(r) for r in rows], anchors, tokenizer.pad_token_id)
    wrapper = coconut.ContinuousThoughts(model, tokens.thought, thought_norm=thought_norm)
    with torch.no_grad():
        cached = wrapper(ids, attention_mask=attention, use_cache=use_cache).logits
        full = recompute_logits(model, ids, attention, tokens.thought, thought_norm)
    real = attention.bool()
    assert cached.shape == full.shape
    torch.testing.assert_close(cached[real], full[real], atol=1e-5, rtol=1e-4)


def test_thought_norm_comes_from_the_model_config(tiny):
    """A checkpoint trained with `thought_scale: embedding` answers with the same rescaling."""
    model, _tokenizer, tokens = tiny
    assert coconut.ContinuousThoughts(model, tokens.thought).thought_norm is None
    setattr(model.config, coconut.THOUGHT_NORM_KEY, coconut.mean_embedding_norm(model))
    norm = coconut.ContinuousThoughts(model, tokens.thought).thought_norm
    assert norm == pytest.approx(float(model.get_input_embeddings().weight.norm(dim=-1).mean()))
    setattr(model.config, coconut.THOUGHT_NORM_KEY, None)


def test_n_thoughts_take_n_plus_one_passes(tiny):
    model, _tokenizer, tokens = tiny
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    wrapper = coconut.ContinuousThoughts(model, tokens.thought)
    ids = torch.tensor([[5, 6, tokens.bot] + [tokens.thought] * 4 + [tokens.eot, 7]])
    with torch.no_grad():
        wrapper(ids)
    handle.remove()
    assert len(calls) == 5


def test_lean_passes_train_like_the_model_forward(tiny):
    """Without a cache wanted back, a Llama runs its passes through `LlamaPasses`: the same loss
    and the same gradients as through the model's own forward, a pass per thought and span."""
    model, tokenizer, tokens = tiny
    model.train()
    rows = [[5, 6, tokens.bot] + [tokens.thought] * 2 + [tokens.eot, 20, 21, 22],
            [9, 10, 11, 12, tokens.bot, tokens.thought, tokens.eot, 30]]
    anchors = [r.index(tokens.bot) for r in rows]
    masks = [[False] * (r.index(tokens.eot) + 1) + [True] * (len(r) - r.index(tokens.eot) - 1) for r in rows]
    ids, attention, loss_mask = coconut.pad_aligned(rows, masks, anchors, tokenizer.pad_token_id)
    assert LlamaPasses.supports(model)
    wrapper = coconut.ContinuousThoughts(model, tokens.thought)
    losses, grads, runs = [], [], []
    original = LlamaPasses.run
    for lean in (True, False):
        model.zero_grad()
        with patch.object(LlamaPasses, "supports", staticmethod(lambda _model, lean=lean: lean)), \
                patch.object(LlamaPasses, "run", lambda self, *a, lean=lean: runs.append(lean) or original(self, *a)):
            loss = coconut.coconut_loss(wrapper, ids, attention, loss_mask)
        loss.backward()
        losses.append(loss.item())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    assert runs == [True] * 3  # two thoughts, three passes; none for the model-forward run
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for name, grad in grads[1].items():
        # float32 sums taken in another order (fused q/k/v, MKL or oneDNN by CPU) differ in the last
        # bits: the bound scales with the gradient, far below what a wrong term would move
        scale = float(grad.abs().max())
        torch.testing.assert_close(grads[0][name], grad, atol=1e-4 * scale + 1e-8, rtol=1e-3, msg=name)
    assert grads[0]["model.embed_tokens.weight"][5].abs().sum() > 0  # through the thoughts to the question


def test_lean_passes_leave_watched_and_wrapped_models_alone(tiny):
    model, _tokenizer, _tokens = tiny
    for module in (model, model.model.layers[1].mlp):
        handle = module.register_forward_hook(lambda *_: None)
        assert not LlamaPasses.supports(model)
        handle.remove()
    assert LlamaPasses.supports(model)
    # transformers' own output capturing, which a forward asked for hidden states installs for
    # good (generation with thoughts does), does not count: it serves that forward only
    model(torch.tensor([[5, 6, 7]]), output_hidden_states=True)
    assert any(m._forward_hooks for m in model.modules())
    assert LlamaPasses.supports(model)
    model.gradient_checkpointing_enable()
    assert not LlamaPasses.supports(model)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert not LlamaPasses.supports(gpt2)
    lora, _tokenizer = tiny_policy(depth=1, seed=0)
    lora = peft.get_peft_model(lora, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert not LlamaPasses.supports(lora)  # the passes would skip its adapters


def test_gradient_reaches_through_the_thoughts(tiny):
    """The loss after the thoughts depends on the question through the fed-back hidden states."""
    model, _tokenizer, tokens = tiny
    model.train()
    wrapper = coconut.ContinuousThoughts(model, tokens.thought)
    ids = torch.tensor([[5, 6, tokens.bot, tokens.thought, tokens.thought, tokens.eot, 7, 8]])
    mask = torch.tensor([[False] * 6 + [True, True]])
    loss = coconut.coconut_loss(wrapper, ids, torch.ones_like(ids), mask)
    loss.backward()
    assert model.get_input_embeddings().weight.grad[5].abs().sum() > 0


def test_stage_schedule():
    # 3 steps, c=2, max_latent_stage=2: (steps replaced, thoughts)
    plans = [coconut.stage_plan(3, k, 2, 2) for k in range(5)]
    assert plans == [(0, 0), (1, 2), (2, 4), (3, 4), (3, 4)]
    # an example shorter than the stage: every step replaced, thoughts as the stage says
    assert coconut.stage_plan(1, 2, 2, 3) == (1, 4)
    assert [coconut.thoughts_at(k, 2, 2) for k in range(5)] == [0, 2, 4, 4, 4]


def test_example_and_loss_mask_by_hand():
    tokens = coconut.LatentTokens(bot=100, eot=101, thought=102)
    prompt, steps, answer = [1, 2], [[10, 11], [12], [13, 14]], [50, 2]
    ids, mask = coconut.coconut_example(prompt, steps, answer, 0, 1, 2, tokens)
    assert ids == [1, 2, 100, 101, 10, 11, 12, 13, 14, 50, 2]
    assert mask == [False] * 4 + [True] * 7
    ids, mask = coconut.coconut_example(prompt, steps, answer, 2, 1, 2, tokens)
    assert ids == [1, 2, 100, 102, 102, 101, 13, 14, 50, 2]
    assert mask == [False] * 6 + [True] * 4
    ids, mask = coconut.coconut_example(prompt, steps, answer, 3, 2, 2, tokens)
    assert ids == [1, 2, 100] + [102] * 4 + [101, 50, 2]
    assert mask == [False] * 8 + [True] * 2


def test_thought_targets_by_hand():
    """Each replaced step's c thoughts target its last c tokens; thoughts past the replaced steps
    and a step shorter than c leave some untargeted."""
    steps = [[10, 11, 12], [13, 14], [15]]
    assert coconut.thought_targets(steps, 0, 2, 3) == []
    assert coconut.thought_targets(steps, 1, 2, 3) == [11, 12]
    assert coconut.thought_targets(steps, 2, 2, 3) == [11, 12, 13, 14]
    assert coconut.thought_targets(steps, 3, 2, 3) == [11, 12, 13, 14, -100, 15]
    # past max_latent_stage every step is replaced but the thoughts stay at max_latent_stage * c
    assert coconut.thought_targets(steps, 4, 1, 2) == [12, 14]
    # a one-step example at a late stage: the step's thoughts first, then untargeted ones
    assert coconut.thought_targets([[7, 8, 9]], 3, 3, 3) == [7, 8, 9] + [-100] * 6


def test_thought_targets_train_the_state_each_thought_is(tiny):
    """With `thought_labels`, training makes the position before each thought predict its target,
    so the fed-back state carries that token; without labels the loss is the answer's alone."""
    model, _tokenizer, tokens = tiny
    model.train()
    wrapper = coconut.ContinuousThoughts(model, tokens.thought)
    ids = torch.tensor([[5, 6, tokens.bot, tokens.thought, tokens.thought, tokens.eot, 7, 8]])
    mask = torch.tensor([[False] * 6 + [True, True]])
    labels = torch.full_like(ids, -100)
    labels[0, 3:5] = torch.tensor([40, 41])  # thought 1 carries token 40, thought 2 token 41
    attention = torch.ones_like(ids)
    plain = coconut.coconut_loss(wrapper, ids, attention, mask)
    ignored = coconut.coconut_loss(wrapper, ids, attention, mask, torch.full_like(ids, -100))
    assert ignored.item() == pytest.approx(plain.item())
    assert coconut.coconut_loss(wrapper, ids, attention, mask, labels).item() > plain.item()

    def predicted() -> list[int]:
        with torch.no_grad():
            return wrapper(ids, attention_mask=attention).logits[0, 2:4].argmax(-1).tolist()

    assert predicted() != [40, 41]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        coconut.coconut_loss(wrapper, ids, attention, mask, labels).backward()
        optimizer.step()
    assert predicted() == [40, 41]


def test_pad_aligned_puts_bot_in_one_column():
    rows = [[1, 2, 100, 102, 101, 7], [3, 100, 101, 8, 9, 10]]
    masks = [[False] * 5 + [True], [False] * 3 + [True] * 3]
    ids, attention, loss_mask = coconut.pad_aligned(rows, masks, [2, 1], 0)
    assert ids.tolist() == [[1, 2, 100, 102, 101, 7, 0], [0, 3, 100, 101, 8, 9, 10]]
    assert attention.tolist() == [[1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1]]
    assert loss_mask.tolist() == [[False] * 5 + [True, False], [False] * 4 + [True] * 3]


def test_thought_labels_land_on_the_aligned_thought_columns():
    rows = [[1, 2, 100, 102, 102, 101, 7], [3, 100, 102, 102, 101, 8]]
    ids, _, _ = coconut.pad_aligned(rows, [[False] * len(r) for r in rows], [2, 1], 0)
    labels = coconut.thought_label_columns([[40, 41], [-100, 42]], [2, 1], ids.shape[1])
    assert (ids[labels != -100] == 102).all()
    assert labels.tolist() == [[-100, -100, -100, 40, 41, -100, -100], [-100, -100, -100, -100, 42, -100, -100]]


# --- pause tokens --------------------------------------------------------------------------------
def test_pause_tokens_carry_no_hidden_state_forward(tiny):
    """Under `method: pause` a <thought> is its own learned embedding: what the first layer
    receives at every thought is that row, whatever came before (under COCONUT, the state of the
    position before), and the logits are one plain forward over the ids."""
    model, tokenizer, tokens = tiny
    rows = [[5, 6, 7, tokens.bot] + [tokens.thought] * 3 + [tokens.eot, 20, 21],
            [9, 10, 11, 12, 13, tokens.bot, tokens.thought, tokens.eot, 30, 31, 32]]
    anchors = [r.index(tokens.bot) for r in rows]
    ids, attention, _ = coconut.pad_aligned(rows, [[True] * len(r) for r in rows], anchors, tokenizer.pad_token_id)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    seen = []
    handle = model.model.layers[0].register_forward_pre_hook(
        lambda _module, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True)
    with torch.no_grad():
        paused = coconut.PauseTokens(model)(ids, attention_mask=attention).logits
        pause_inputs = torch.cat(seen, dim=1)
        seen.clear()
        coconut.ContinuousThoughts(model, tokens.thought)(ids, attention_mask=attention)
        coconut_inputs = torch.cat(seen, dim=1)
        plain = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    handle.remove()
    is_thought = ids == tokens.thought
    row = model.get_input_embeddings().weight[tokens.thought].detach()
    assert int(is_thought.sum()) == 4
    assert torch.equal(pause_inputs[is_thought], row.expand(4, -1))
    assert not torch.allclose(coconut_inputs[is_thought], row.expand(4, -1), atol=1e-3)  # the premise
    real = attention.bool()
    torch.testing.assert_close(paused[real], plain[real], atol=1e-5, rtol=1e-4)


def test_pause_policy_decodes_the_plain_model_on_its_block(tiny, tmp_path):
    """A pause policy answers as greedy `generate` over `prompt <bot> <thought>*n <eot>` would,
    counts n as its latent steps, never writes a marker, and round-trips through save and load."""
    model, tokenizer, tokens = tiny
    policy = Policy(model, tokenizer)
    policy.latent = {"method": "pause", "thoughts": 3}
    prompts = [policy.prompt_ids("12+7=?"), policy.prompt_ids("3+4+5=?")]
    batched = policy.sample(prompts, max_new_tokens=6, greedy=True)
    markers = {tokens.bot, tokens.eot, tokens.thought}
    for prompt, got in zip(prompts, batched.completion_ids):
        ids = torch.tensor([coconut.latent_prompts([prompt], tokens, 3)[0]])
        expected = []
        with torch.no_grad():
            for _ in range(len(got)):
                logits = model(input_ids=ids).logits[0, -1]
                logits[list(markers)] = -float("inf")
                token = int(logits.argmax())
                expected.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert got == expected
    assert policy.latent_steps == 3
    policy.save(tmp_path / "ckpt")
    loaded = Policy.load(tmp_path / "ckpt")
    assert loaded.latent == policy.latent
    assert loaded.sample(prompts, max_new_tokens=6, greedy=True).completion_ids == batched.completion_ids


def test_latent_policy_generates_batched_and_round_trips(tiny, tmp_path):
    model, tokenizer, tokens = tiny
    policy = Policy(model, tokenizer)
    policy.latent = {"method": "coconut", "thoughts": 3}
    prompts = [policy.prompt_ids("12+7=?"), policy.prompt_ids("3+4+5=?")]
    batched = policy.sample(prompts, max_new_tokens=6, greedy=True)
    # one row at a time, recomputing the whole sequence for every token: the reference's way
    for prompt, got in zip(prompts, batched.completion_ids):
        ids = torch.tensor([coconut.latent_prompts([prompt], tokens, 3)[0]])
        expected = []
        with torch.no_grad():
            for _ in range(len(got)):
                logits = recompute_logits(model, ids, torch.ones_like(ids), tokens.thought)
                token = int(logits[0, -1].argmax())
                expected.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert got == expected
    policy.save(tmp_path / "ckpt")
    loaded = Policy.load(tmp_path / "ckpt")
    assert loaded.latent == policy.latent and loaded.latent_steps == 3
    assert loaded.sample(prompts, max_new_tokens=6, greedy=True).completion_ids == batched.completion_ids


def test_final_decay_schedule():
    stage = LatentStage(kind="latent", name="think", method="coconut", levels=[1], steps=10, lr=1.0,
                        warmup_steps=2, final_decay=True, steps_per_stage=2, max_latent_stage=2)
    # warm-up after each reset, then constant until the last curriculum step begins (step 6)
    assert [lr_factor(stage, s, 0, final_start=6) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert lr_factor(stage, 5, 0, final_start=None) == 1.0
    # the last one (steps 6-9) warms up again and falls on a cosine towards 0 at step 10
    decay = [lr_factor(stage, s, 6, final_start=6) for s in range(6, 10)]
    assert decay == pytest.approx([0.5, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])
    held = stage.model_copy(update={"final_decay": False})
    assert [lr_factor(held, s, 6, final_start=6) for s in range(6, 10)] == [0.5, 1.0, 1.0, 1.0]


def test_final_decay_that_could_never_start_is_refused():
    with pytest.raises(ValueError, match="final_decay: the last curriculum stage would begin at step 600"):
        LatentStage(kind="latent", name="think", method="coconut", levels=[1], steps=600, final_decay=True,
                    steps_per_stage=150, max_latent_stage=3)
    LatentStage(kind="latent", name="think", method="coconut", levels=[1], steps=601, final_decay=True,
                steps_per_stage=150, max_latent_stage=3)


def test_example_stage_mixes_earlier_or_any_stage():
    """`earlier_stage_share` (ours) draws from the stages before the current one only; `uniform_prob`
    (the paper's) from every stage 0..n_steps, later ones included; with neither, the current one."""
    def shares(n: int = 20000, **kwargs) -> list[float]:
        rng = random.Random(0)
        draws = [coconut.example_stage(rng=rng, **kwargs) for _ in range(n)]
        return [draws.count(k) / n for k in range(max(draws) + 1)]

    assert shares(phase=2, n_steps=3) == [0.0, 0.0, 1.0]
    # at phase 2 with share 1/2: stage 2 half the time, 0 and 1 a quarter each, never 3
    assert shares(phase=2, n_steps=3, earlier_stage_share=0.5) == pytest.approx([0.25, 0.25, 0.5], abs=0.015)
    assert shares(phase=0, n_steps=3, earlier_stage_share=0.5) == [1.0]  # nothing earlier than 0
    # uniform_prob 1: each of the stages 0..3 a quarter of the time, phase or not
    assert shares(phase=2, n_steps=3, uniform_prob=1.0) == pytest.approx([0.25] * 4, abs=0.015)
    # uniform_prob 0.4 at phase 1 of 4 steps: 0.4/5 for each stage, plus 0.6 for stage 1
    assert shares(phase=1, n_steps=4, uniform_prob=0.4) == pytest.approx([0.08, 0.68, 0.08, 0.08, 0.08], abs=0.015)


def test_uniform_prob_is_a_coconut_probability_and_earlier_stage_share_is_not_it():
    base = {"kind": "latent", "name": "think", "levels": [1], "steps": 10}
    assert LatentStage(**base, method="coconut", uniform_prob=0.3).uniform_prob == 0.3
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="uniform_prob"):
            LatentStage(**base, method="coconut", uniform_prob=bad)
    with pytest.raises(ValueError, match="uniform_prob: not a field of method 'icot'"):
        LatentStage(**base, method="icot", uniform_prob=0.3)
    assert "[uniform_prob]" not in LatentStage.model_fields["earlier_stage_share"].description
    assert "[uniform_prob]" in LatentStage.model_fields["uniform_prob"].description


@pytest.mark.parametrize("thoughts", [0, 2], ids=["markers-only", "thoughts"])
def test_latent_policy_never_writes_its_markers(tiny, thoughts):
    """<bot>, <eot>, <thought> are markers, not text: at a temperature that makes all 103 tokens
    about as likely (an unmasked marker shows up ~15 times in 512 draws), a latent policy samples
    none, and a drawn <thought> no longer fails the thought pass."""
    model, tokenizer, tokens = tiny
    markers = {tokens.bot, tokens.eot, tokens.thought}
    policy = Policy(model, tokenizer)
    policy.latent = {"method": "coconut", "thoughts": thoughts}
    prompts = [policy.prompt_ids(f"{i}+{i}=?") for i in range(32)]
    if not thoughts:  # the premise: without the mask the same draws do write markers
        torch.manual_seed(0)
        plain = rollout.sample(model, coconut.latent_prompts(prompts, tokens, 0), eos_ids=policy.eos_ids,
                               pad_id=policy.pad_id, max_new_tokens=16, temperature=50.0)
        assert markers & {t for row in plain.completion_ids for t in row}
    torch.manual_seed(0)
    sampled = policy.sample(prompts, max_new_tokens=16, temperature=50.0)
    written = {t for row in sampled.completion_ids for t in row}
    assert len(written) > 50 and not markers & written
    assert all(math.isfinite(lp) for row in sampled.logprobs for lp in row) and math.isfinite(sampled.entropy_sum)


def test_latent_policy_never_writes_its_markers_greedy(tiny):
    """Greedy too: with the markers made the likeliest tokens, the next likeliest is written."""
    model, tokenizer, tokens = tiny
    policy = Policy(model, tokenizer)
    policy.latent = {"method": "coconut", "thoughts": 2}
    prompts = [policy.prompt_ids("12+7=?"), policy.prompt_ids("3+4+5=?")]
    expected = policy.sample(prompts, max_new_tokens=6, greedy=True).completion_ids
    markers = [tokens.bot, tokens.eot, tokens.thought]
    bias = torch.zeros(len(tokenizer))
    bias[markers] = 1e4

    handle = model.lm_head.register_forward_hook(lambda _module, _args, out: out + bias)
    try:
        for temperature in (1.0, 0.5):
            got = policy.sample(prompts, max_new_tokens=6, greedy=True, temperature=temperature).completion_ids
            assert got == expected
    finally:
        handle.remove()


# --- iCoT -----------------------------------------------------------------------------------------
def test_removal_grows_a_token_at_a_time():
    """8 tokens per 100 steps: one more whenever step * 8 / 100 passes a whole number."""
    assert [icot.scheduled_removal(s, 8, 100) for s in (0, 12, 13, 25, 99, 100, 250)] == [0, 0, 1, 2, 7, 8, 20]
    assert icot.scheduled_removal(13, 8, 100, remove_start=4) == 5
    # 3 tokens per 5 steps: 0, 0.6, 1.2, 1.8, 2.4, 3, 3.6, 4.2, 4.8, 5.4, 6 rounded down
    assert [icot.scheduled_removal(s, 3, 5) for s in range(11)] == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 6]


def test_drop_all_bound_is_reached_not_passed():
    """`drop_all_after: 16` removes everything at s = 16 (the reference's >=), smoothing aside."""
    assert icot.tokens_to_remove(16, 0, 30, drop_all_after=16) == 30
    assert icot.tokens_to_remove(15, 3, 30, drop_all_after=16) == 18
    assert icot.tokens_to_remove(8, 2, 30, None) == 10
    assert icot.tokens_to_remove(28, 5, 30, None) == 30  # capped at the transcript
    assert [icot.all_removed(s, 30, 16) for s in (15, 16)] == [False, True]
    assert [icot.all_removed(s, 30, None) for s in (29, 30)] == [False, True]
    assert icot.icot_target([1, 2, 3, 4], [9, 2], 3) == [4, 9, 2]


def test_smoothing_distribution():
    # λ = ln 2 halves each offset's weight: 1, 1/2, 1/4 over 7/4
    assert icot.smoothing_probs(math.log(2), 2) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert icot.smoothing_probs(None, 3) == [1.0, 0.0, 0.0, 0.0]  # off: every example removes s exactly
    assert icot.smoothing_probs(4.0, 0) == [1.0]
    rng = random.Random(0)
    probs = icot.smoothing_probs(math.log(2), 2)
    draws = [icot.sample_offset(probs, rng) for _ in range(20000)]
    assert [draws.count(o) / len(draws) for o in range(3)] == pytest.approx([4 / 7, 2 / 7, 1 / 7], abs=0.01)


# --- the stage, end to end ------------------------------------------------------------------------
# a warm start that gives every latent stage test its reasoning pool (tests/test_ccot.py too)
WARM = """\
seed: 0
threads: 1
model: {kind: tiny, depth: 2}
task: {name: arith, options: {max_operand: 3}, eval_levels: [1, 2], eval_problems: 8}
stages:
  - name: warm
    kind: warmstart
    steps: 20
    levels: [1, 2]
    batch_size: 32
    lr: 0.01
    digression_rate: 0.0
    eval_every: 20
    eval_problems: 8
"""
CONFIG = "name: latent-e2e\n" + WARM + """\
  - name: think
    kind: latent
    method: {method}
    levels: [1, 2]
    steps: 6
    pool_problems: 20
    batch_size: 8
    eval_every: 3
    eval_problems: 4
    checkpoint_every: 2
    max_new_tokens: 24
{extra}
"""
METHODS = {
    "coconut": ("    steps_per_stage: 2\n    max_latent_stage: 1\n    earlier_stage_share: 0.3\n"
                "    thought_scale: embedding\n    thought_targets: true\n    final_decay: true"),
    # removal 0, 0, 1, 1, 2, 3 over the 6 steps: resets at steps 3 and 5 (1-based), all reasoning gone
    # (drop_all_after) from step 5, so none at step 6, where the removal still grows
    "icot": "    remove_every_steps: 5\n    remove_tokens: 3\n    drop_all_after: 2\n    final_decay: true",
    "pause": "    steps_per_stage: 2\n    max_latent_stage: 1\n    thought_targets: true\n    final_decay: true",
}


@pytest.mark.parametrize("method", ["coconut", "icot", "pause"])
def test_cli_run_with_latent_stage(method, tmp_path):
    path = tmp_path / "latent.yaml"
    path.write_text(CONFIG.replace("{method}", method).replace("{extra}", METHODS[method]))
    run_dir = tmp_path / "run"
    result = cli("run", str(path), "--run-dir", str(run_dir), "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    warm, think = summary["stages"]
    assert warm["latent_steps"] == 0
    expected_thoughts = 0 if method == "icot" else 1  # stage 2: every step latent, 1 thought
    assert think["latent_steps"] == expected_thoughts and think["curriculum_final"]
    before = load_file(run_dir / "checkpoints" / "warm" / "model.safetensors")
    after = load_file(run_dir / "checkpoints" / "think" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k][: before[k].shape[0]]) for k in before)
    lines = [r for r in metric_lines(run_dir) if r["stage"] == "think" and r.get("event") != "stage_end"]
    assert [r["step"] for r in lines] == list(range(1, 7))
    assert all({"loss", "latent_steps", "seconds"} <= set(r) for r in lines)
    assert sum(bool(r.get("optimizer_reset")) for r in lines) == 2
    if method == "icot":
        assert [r["removed_tokens"] for r in lines] == [0, 0, 1, 1, 2, 3]
        assert [r["step"] for r in lines if r.get("optimizer_reset")] == [3, 5]
    # the last curriculum step (steps 5-6) decays the learning rate, half way at its second step
    assert [r["lr"] for r in lines[:5]] == [0.001] * 5 and lines[5]["lr"] == pytest.approx(0.0005)
    assert (run_dir / "latent" / "think.jsonl").is_file()
    # the checkpoint answers through `eval` and `sample` as it was trained to
    evaluated = cli("eval", str(run_dir / "checkpoints" / "think"), "--task", "arith", "--options",
                    "{max_operand: 3}", "--levels", "1", "--n", "4", "--max-new-tokens", "16", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    sampled = cli("sample", str(run_dir / "checkpoints" / "think"), "1+2=?", "--max-new-tokens", "16", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr


@pytest.mark.parametrize("method", ["coconut", "icot"])
def test_latent_stage_resumes_to_the_same_weights(method, tmp_path, monkeypatch):
    path = tmp_path / "latent.yaml"
    path.write_text(CONFIG.replace("{method}", method).replace("{extra}", METHODS[method]))
    config = load_config(path)
    reference = tmp_path / "reference"
    run_pipeline(config, run_dir=str(reference), progress=False)
    crashed = tmp_path / "crashed"
    crash_in("think", 5, monkeypatch)  # after the step-4 checkpoint, mid curriculum stage
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(config, run_dir=str(crashed), progress=False)
    monkeypatch.undo()
    state = json.loads((crashed / "checkpoints" / "latest" / "state.json").read_text())
    assert (state["stage_index"], state["stage_step"]) == (1, 4)
    run_pipeline(config, run_dir=str(crashed), resume=True, progress=False)
    want = load_file(reference / "checkpoints" / "think" / "model.safetensors")
    got = load_file(crashed / "checkpoints" / "think" / "model.safetensors")
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0)
    assert step_keys(crashed) == step_keys(reference)
