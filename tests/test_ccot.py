"""CCoT (latent/ccot.py): its losses on hand-made examples, and the teacher-forced state loss is
zero exactly where the model's own contemplation reproduces the targets; the number of
contemplation tokens and the positions they stand for on a hand-worked transcript; generation with
the KV cache, batched, equals recomputing every sequence from scratch (the same states, the same
stops, the same answer); a short run of the stage trains, and its checkpoint answers through
contemplation tokens after a save and load; bad ccot fields are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_latent import WARM
from test_pipeline import crash_in, step_keys

from shrinkthink.config import LatentStage, load_config
from shrinkthink.errors import UserError
from shrinkthink.latent import ccot, coconut
from shrinkthink.model import tiny_policy
from shrinkthink.pipeline import run_pipeline
from shrinkthink.policy import Policy

LAYER = 1


@pytest.fixture
def tiny():
    model, tokenizer = tiny_policy(depth=2, seed=0)
    tokens = coconut.add_latent_tokens(model, tokenizer)
    model.eval()
    return model, tokenizer, tokens


def with_end_direction(model, tokens, scale: float = 4.0, seed: int = 1) -> None:
    """Give <eot>'s output row a random direction of length `scale`, so that P(<eot> next) swings
    from state to state and END stops rows at different contemplation tokens (an untrained model
    puts about 1/V there everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        direction = torch.randn(model.config.hidden_size, generator=generator)
        model.lm_head.weight[tokens.eot] = direction / direction.norm() * scale


# --- the pure functions ---------------------------------------------------------------------------
def test_thought_count_is_the_ceiling_of_r_m():
    assert ccot.thought_count(13, 0.25) == 4  # 3.25
    assert ccot.thought_count(30, 0.1) == 3  # 0.1 * 30 is 3.0000000000000004 in floating point
    assert ccot.thought_count(12, 0.25) == 3
    assert ccot.thought_count(1, 0.05) == 1
    assert ccot.thought_count(0, 0.5) == 0
    assert ccot.thought_count(7, 1.0) == 7


def test_positions_on_a_hand_worked_transcript(tiny):
    """`3+4=7\\n7+5=12\\n` is 13 characters; r = 0.25 gives k = 4 spans of 3.25, whose last
    positions are ceil(13 j / 4) - 1 = 3, 6, 9, 12: the first `=`, the `7` carried into the second
    step, its `=`, and the closing line break, which has read the whole reasoning."""
    _model, tokenizer, _tokens = tiny
    reasoning = tokenizer("3+4=7\n7+5=12\n", add_special_tokens=False).input_ids
    assert len(reasoning) == 13
    k = ccot.thought_count(len(reasoning), 0.25)
    positions = ccot.select_positions(len(reasoning), k)
    assert positions == [3, 6, 9, 12]
    assert [tokenizer.decode([reasoning[i]]) for i in positions] == ["=", "7", "=", "\n"]
    assert ccot.select_positions(6, 2) == [2, 5]
    assert ccot.select_positions(5, 5) == [0, 1, 2, 3, 4]
    assert ccot.select_positions(5, 0) == []


def test_teacher_states_are_the_layer_states_at_the_chosen_positions(tiny):
    """Batched and left-padded, the teacher's targets are the layer-l states an unpadded forward
    pass over question + reasoning has at the chosen reasoning positions."""
    model, tokenizer, _tokens = tiny
    prompts = [tokenizer("12+7=?\n").input_ids, tokenizer("3+4+5=?\n").input_ids]
    reasonings = [tokenizer("12+7=19\n", add_special_tokens=False).input_ids,
                  tokenizer("3+4=7\n7+5=12\n", add_special_tokens=False).input_ids]
    counts = [2, 4]
    states = ccot.teacher_states(model, prompts, reasonings, counts, LAYER, tokenizer.pad_token_id)
    for prompt, reasoning, k, got in zip(prompts, reasonings, counts, states):
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([prompt + reasoning]), output_hidden_states=True).hidden_states
        picked = [len(prompt) + i for i in ccot.select_positions(len(reasoning), k)]
        torch.testing.assert_close(got, hidden[LAYER][0, picked], atol=1e-5, rtol=1e-4)


def test_state_loss_by_hand():
    targets = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])  # [B=1, K=3, H=2]
    mask = torch.tensor([[True, True, False]])
    assert float(ccot.state_loss(targets.clone(), targets, mask, scale=0.5)) == 0.0
    predicted = targets.clone()
    predicted[0, 0, 0] += 1.0  # squared error 1 over 2 dimensions: 0.5 at the first position
    predicted[0, 2] = 9.0  # off, but not a target
    # (0.5 + 0) / (scale 0.5 * 2 positions)
    assert float(ccot.state_loss(predicted, targets, mask, scale=0.5)) == pytest.approx(0.5)
    # one rank's share: divided by the whole batch's 4 positions instead
    assert float(ccot.state_loss(predicted, targets, mask, scale=0.5, count=4)) == pytest.approx(0.25)


def test_end_loss_by_hand():
    """p = 1/3 with three equal logits: -log p where the row stops, -log(1 - p) where it goes on."""
    logits = torch.zeros((1, 3, 3))  # [B, positions, V]; <eot> is token 2
    stop, go = ccot.stop_positions([2], 3)
    assert stop.tolist() == [[False, False, True]] and go.tolist() == [[True, True, False]]
    expected = (2 * -torch.log(torch.tensor(2 / 3)) - torch.log(torch.tensor(1 / 3))) / 3
    assert float(ccot.end_loss(logits, 2, stop, go)) == pytest.approx(float(expected))
    # a row with no contemplation token stops at <bot>
    stop, go = ccot.stop_positions([0], 3)
    assert stop.tolist() == [[True, False, False]] and not go.any()


def test_teacher_forced_state_loss_is_zero_when_the_model_reproduces_its_targets(tiny):
    """Targets the model itself generates (each contemplation input the layer-l output before it)
    are exactly what teacher forcing asks it to reproduce: its state loss is zero there, and
    positive for any other targets. The other two losses are there and finite."""
    model, tokenizer, tokens = tiny
    prompts = [tokenizer("12+7=?\n").input_ids, tokenizer("3+4+5=?\n").input_ids, tokenizer("1+1=?\n").input_ids]
    answers = [tokenizer("#19", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]] * 3
    own = ccot.contemplate(model, prompts, tokens, LAYER, tokenizer.pad_token_id, counts=[3, 1, 0])
    assert [len(s) for s in own] == [3, 1, 0]
    with torch.no_grad():
        exact = ccot.training_losses(model, prompts, answers, own, tokens, LAYER, 1.0, tokenizer.pad_token_id)
        assert float(exact.state) < 1e-9
        assert torch.isfinite(exact.end) and float(exact.end) > 0 and float(exact.answer) > 0
        moved = [s.clone() for s in own]
        moved[0][2] += 0.1  # the last target of the first row only
        off = ccot.training_losses(model, prompts, answers, moved, tokens, LAYER, 1.0, tokenizer.pad_token_id)
    assert float(off.state) > 1e-4


def test_losses_reach_the_weights(tiny):
    model, tokenizer, tokens = tiny
    prompts = [tokenizer("12+7=?\n").input_ids]
    targets = [torch.randn(2, model.config.hidden_size)]
    answers = [tokenizer("#19", add_special_tokens=False).input_ids]
    losses = ccot.training_losses(model, prompts, answers, targets, tokens, LAYER, 1.0, tokenizer.pad_token_id)
    losses.state.backward()
    # the first contemplation input is a gold state, not <thought>'s embedding
    assert model.get_input_embeddings().weight.grad[tokens.thought].abs().sum() == 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# --- generation -----------------------------------------------------------------------------------
def recompute(model, prompt: list[int], tokens, *, count: int | None, max_thoughts: int, threshold: float,
              answer_tokens: int) -> tuple[torch.Tensor, list[int]]:
    """The definition, one row, no cache: each contemplation input is the layer-l output of a full
    forward pass over everything before it; END reads P(<eot> next) there; the answer is greedy, a
    full pass a token, never a marker."""
    embed = model.get_input_embeddings()
    sequence = embed(torch.tensor(prompt + [tokens.bot]))  # [T, H]
    states = []
    with torch.no_grad():
        while True:
            out = model(inputs_embeds=sequence[None], output_hidden_states=True)
            p_stop = float(out.logits[0, -1].softmax(-1)[tokens.eot])
            limit = count if count is not None else max_thoughts
            if len(states) >= limit or (count is None and p_stop > threshold):
                break
            state = out.hidden_states[LAYER][0, -1]
            states.append(state)
            sequence = torch.cat([sequence, state[None]])
        sequence = torch.cat([sequence, embed(torch.tensor([tokens.eot]))])
        answer = []
        for _ in range(answer_tokens):
            logits = model(inputs_embeds=sequence[None]).logits[0, -1]
            logits[[tokens.bot, tokens.eot, tokens.thought]] = -float("inf")
            token = int(logits.argmax())
            answer.append(token)
            sequence = torch.cat([sequence, embed(torch.tensor([token]))])
    return (torch.stack(states) if states else torch.zeros((0, model.config.hidden_size))), answer


@pytest.mark.parametrize("rule", ["end", "mean"])
def test_cached_batched_generation_equals_recomputing(tiny, rule):
    model, tokenizer, tokens = tiny
    with_end_direction(model, tokens)
    policy = Policy(model, tokenizer)
    prompts = [policy.prompt_ids(q) for q in ("12+7=?", "3+4+5=?", "9=?", "15+2+8+1=?")]
    threshold, max_thoughts, thoughts = 0.5, 6, 3
    count = None if rule == "end" else thoughts
    expected = [recompute(model, p, tokens, count=count, max_thoughts=max_thoughts, threshold=threshold,
                          answer_tokens=5) for p in prompts]
    if rule == "end":  # END must stop the rows at different points for this to test anything
        assert len({len(states) for states, _ in expected}) >= 2
    states = ccot.contemplate(model, prompts, tokens, LAYER, tokenizer.pad_token_id,
                              counts=None if count is None else [count] * len(prompts),
                              max_thoughts=max_thoughts, end_threshold=threshold)
    for got, (want, _) in zip(states, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    policy.latent = {"method": "ccot", "thoughts": thoughts, "layer": LAYER, "stop_rule": rule,
                     "end_threshold": threshold, "max_thoughts": max_thoughts}
    sampled = policy.sample(prompts, max_new_tokens=5, greedy=True, batch_size=3)  # two sampler batches
    assert sampled.completion_ids == [answer for _, answer in expected]


def test_equal_prompts_share_their_contemplation(tiny):
    """A group repeats its prompt: one contemplation each distinct prompt, the same answer."""
    model, tokenizer, tokens = tiny
    with_end_direction(model, tokens)
    wrapper = ccot.CompressedThoughts(model, tokens, {"layer": LAYER, "stop_rule": "end", "max_thoughts": 4,
                                                      "end_threshold": 0.5}, tokenizer.pad_token_id)
    prompt = tokenizer("12+7=?\n").input_ids
    blocks = wrapper.contemplate([prompt, prompt, prompt])
    assert blocks[0] == blocks[1] == blocks[2] and len(wrapper.states) == 1
    assert blocks[0][: len(prompt) + 1] == prompt + [tokens.bot] and blocks[0][-1] == tokens.eot


# --- the stage ------------------------------------------------------------------------------------
CONFIG = "name: ccot-e2e\n" + WARM + """\
  - name: think
    kind: latent
    method: ccot
    levels: [1, 2]
    steps: 4
    pool_problems: 16
    batch_size: 8
    lr: 0.003
    eval_every: 2
    eval_problems: 4
    checkpoint_every: 2
    max_new_tokens: 16
    compression_ratio: 0.3
{extra}
"""


def write(tmp_path, extra: str = "    stop_rule: mean"):
    path = tmp_path / "ccot.yaml"
    path.write_text(CONFIG.replace("{extra}", extra))
    return path


def test_stage_trains_and_its_checkpoint_answers_through_contemplation(tmp_path):
    run_dir = tmp_path / "run"
    run_pipeline(load_config(write(tmp_path)), run_dir=str(run_dir), progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    warm, think = summary["stages"]
    assert warm["latent_steps"] == 0 and think["latent_steps"] > 0 and think["method"] == "ccot"
    before = load_file(run_dir / "checkpoints" / "warm" / "model.safetensors")
    after = load_file(run_dir / "checkpoints" / "think" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k][: before[k].shape[0]]) for k in before)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in lines if r["stage"] == "think" and r.get("event") != "stage_end"]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert {"state_loss", "end_loss", "answer_loss", "thoughts", "latent_steps"} <= set(r)
        assert r["loss"] == pytest.approx(r["state_loss"] + r["end_loss"] + r["answer_loss"])
        assert not r.get("optimizer_reset")
    assert (run_dir / "latent" / "think.ccot.pt").is_file()
    loaded = Policy.load(run_dir / "checkpoints" / "think")
    latent = loaded.latent
    assert latent["method"] == "ccot" and latent["layer"] == 1 and latent["stop_rule"] == "mean"
    assert loaded.latent_steps == think["latent_steps"] == latent["thoughts"]
    prompts = [loaded.prompt_ids("1+2=?"), loaded.prompt_ids("3+1+2=?")]
    tokens = coconut.latent_tokens(loaded.tokenizer)
    wrapper = ccot.CompressedThoughts(loaded.model, tokens, latent, loaded.pad_id)
    blocks = wrapper.contemplate(prompts)
    assert all(block.count(tokens.thought) == loaded.latent_steps for block in blocks)
    sampled = loaded.sample(prompts, max_new_tokens=16, greedy=True)
    assert all(ids for ids in sampled.completion_ids)
    assert not {tokens.bot, tokens.eot, tokens.thought} & {t for ids in sampled.completion_ids for t in ids}


def test_stage_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A resumed run reads the teacher's states from the run directory (its policy has trained
    since) and ends with the weights of an uninterrupted run."""
    config = load_config(write(tmp_path, "    stop_rule: end"))
    reference = tmp_path / "reference"
    run_pipeline(config, run_dir=str(reference), progress=False)
    crashed = tmp_path / "crashed"
    crash_in("think", 3, monkeypatch)  # after the step-2 checkpoint
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(config, run_dir=str(crashed), progress=False)
    monkeypatch.undo()
    run_pipeline(config, run_dir=str(crashed), resume=True, progress=False)
    want = load_file(reference / "checkpoints" / "think" / "model.safetensors")
    got = load_file(crashed / "checkpoints" / "think" / "model.safetensors")
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0)
    assert step_keys(crashed) == step_keys(reference)


# --- the config -----------------------------------------------------------------------------------
def config_error(tmp_path, extra: str) -> str:
    with pytest.raises(UserError) as caught:
        load_config(write(tmp_path, extra))
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("extra, field", [
    ("    compression_ratio: 0", "compression_ratio"),
    ("    compression_ratio: 1.5", "compression_ratio"),
    ("    autoregressive_layer: 0", "autoregressive_layer"),
    ("    end_threshold: 1.0", "end_threshold"),
    ("    stop_rule: always", "stop_rule"),
    ("    thoughts_per_step: 2", "thoughts_per_step: not a field of method 'ccot'"),
    ("    remove_tokens: 2", "remove_tokens: not a field of method 'ccot'"),
])
def test_bad_ccot_fields_are_one_line_errors(tmp_path, extra, field):
    assert field in config_error(tmp_path, extra)


def test_ccot_fields_belong_to_ccot():
    with pytest.raises(ValueError, match="compression_ratio: not a field of method 'coconut'"):
        LatentStage(kind="latent", name="think", method="coconut", levels=[1], steps=1, compression_ratio=0.5)
    stage = LatentStage(kind="latent", name="think", method="ccot", levels=[1], steps=1, marker_init="#")
    assert stage.compression_ratio == 0.25 and stage.autoregressive_layer is None and stage.stop_rule == "end"


def test_a_layer_past_the_model_is_a_one_line_error(tmp_path):
    config = load_config(write(tmp_path, "    autoregressive_layer: 3"))  # the model has 2 layers
    with pytest.raises(UserError, match="autoregressive_layer: 3 is past the model's 2 layers") as caught:
        run_pipeline(config, run_dir=str(tmp_path / "run"), progress=False)
    assert "\n" not in str(caught.value)
