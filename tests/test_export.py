"""`shrinkthink export`: a stage's checkpoint, exported, loads with plain transformers in a process
that never imports shrinkthink and answers as `shrinkthink sample` does; a LoRA checkpoint exports
merged, with the unmerged policy's logits; a COCONUT checkpoint keeps latent.json and gets a
one-line note; bad input is one line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shrinkthink.cli import EXIT_USER_ERROR, main
from shrinkthink.config import LoraConfig, ModelConfig
from shrinkthink.export import export_checkpoint
from shrinkthink.policy import ADAPTER_DIR, LATENT_FILE, Policy

CONFIG = """\
name: export
seed: 0
threads: 1
model: {kind: tiny, depth: 2}
task: {name: arith, options: {step_format: refer, max_operand: 5}, eval_levels: [1], eval_problems: 4}
stages:
  - {name: warmstart, kind: warmstart, steps: 30, levels: [1, 2], batch_size: 16, lr: 0.01, warmup_steps: 5,
     eval_every: 30, eval_problems: 4, checkpoint_every: 30}
"""
QUESTIONS = ["1+2=?", "3+4+5=?"]
MAX_NEW_TOKENS = 24

# What a user of the exported folder writes: transformers alone, the prompt as Policy.prompt_ids
# builds it (the chat template where the tokenizer has one), greedy decoding.
PLAIN = """\
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path, max_new_tokens, questions = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
answers = []
for question in questions:
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
    else:
        ids = [tokenizer.bos_token_id] + tokenizer(question + "\\n", add_special_tokens=False).input_ids
    prompt = torch.tensor([ids])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answers.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
print(json.dumps({"answers": answers, "shrinkthink_imported": any(m.startswith("shrinkthink") for m in sys.modules)}))
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def plain_answers(path: Path, questions: list[str]) -> list[str]:
    result = run("-c", PLAIN, str(path), str(MAX_NEW_TOKENS), *questions, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["shrinkthink_imported"]
    return report["answers"]


def one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shrinkthink: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def stage_checkpoint(tmp_path_factory) -> Path:
    """The warm-start stage of a tiny run, trained through the CLI."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "export.yaml").write_text(CONFIG)
    result = run("-m", "shrinkthink", "run", "export.yaml", "--run-dir", "run", "--no-progress", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "run" / "checkpoints" / "warmstart"


def test_an_exported_stage_answers_with_plain_transformers_as_sample_does(stage_checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "exported"
    result = run("-m", "shrinkthink", "export", str(stage_checkpoint), str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip()  # no note: the policy answers in visible tokens
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}

    sampled = []
    for question in QUESTIONS:
        result = run("-m", "shrinkthink", "sample", str(stage_checkpoint), question,
                     "--max-new-tokens", str(MAX_NEW_TOKENS), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        sampled.append(result.stdout.removesuffix("\n"))
    assert any(answer.strip() for answer in sampled)  # a trained policy writes something
    assert plain_answers(out, QUESTIONS) == sampled


def test_a_bpe_tokenizer_exports_too(tmp_path: Path) -> None:
    corpus = ["what is twelve plus seven? 12+7=19", "the answer is 19"] * 20
    policy = Policy.from_config(ModelConfig(kind="tiny", depth=2, tokenizer="bpe", vocab_size=200),
                                torch.device("cpu"), corpus=corpus)
    policy.save(tmp_path / "checkpoint")
    export_checkpoint(tmp_path / "checkpoint", tmp_path / "exported")
    questions = ["what is 12+7?", "the answer"]
    ours = policy.sample([policy.prompt_ids(q) for q in questions], max_new_tokens=MAX_NEW_TOKENS, greedy=True)
    assert plain_answers(tmp_path / "exported", questions) == [policy.decode(ids) for ids in ours.completion_ids]


def lora_policy() -> Policy:
    policy = Policy.from_config(ModelConfig(kind="tiny", depth=2, lora=LoraConfig(r=4, alpha=8)), torch.device("cpu"))
    with torch.no_grad():  # peft starts B at zero (a no-op adapter); make the adapters matter
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    policy.model.eval()
    return policy


def test_a_lora_checkpoint_exports_merged_with_the_same_logits(tmp_path: Path, capsys) -> None:
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    policy = lora_policy()
    policy.save(tmp_path / "checkpoint")
    assert "--merge" in one_line_error(capsys, "export", str(tmp_path / "checkpoint"), str(tmp_path / "exported"))
    assert not (tmp_path / "exported").exists()

    assert main(["export", str(tmp_path / "checkpoint"), str(tmp_path / "exported"), "--merge"]) == 0
    assert "merged" in capsys.readouterr().out
    assert not (tmp_path / "exported" / ADAPTER_DIR).exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    for question in ["12+7+30=?", "3=?", "99+1+2+3=?"]:
        ids = torch.tensor([policy.prompt_ids(question)])
        with torch.no_grad():
            ours, theirs = policy.model(input_ids=ids).logits, plain(input_ids=ids).logits
            with policy.model.disable_adapter():
                base = policy.model(input_ids=ids).logits
        assert (base - ours).abs().max() > 1e-2  # the adapters change the logits, and the export keeps that
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_a_coconut_checkpoint_exports_with_its_latent_file_and_a_note(tmp_path: Path, capsys) -> None:
    from transformers import AutoTokenizer

    from shrinkthink.latent.coconut import BOT, EOT, THOUGHT, add_latent_tokens

    policy = Policy.from_config(ModelConfig(kind="tiny", depth=2), torch.device("cpu"))
    add_latent_tokens(policy.model, policy.tokenizer, " ")
    policy.latent = {"method": "coconut", "stage": 1, "thoughts": 2}
    policy.save(tmp_path / "checkpoint")

    assert main(["export", str(tmp_path / "checkpoint"), str(tmp_path / "exported")]) == 0
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "COCONUT" in note[0] and "2 continuous thoughts" in note[0]
    assert json.loads((tmp_path / "exported" / LATENT_FILE).read_text()) == policy.latent
    assert {BOT, EOT, THOUGHT} <= set(AutoTokenizer.from_pretrained(tmp_path / "exported").get_vocab())
    # and shrinkthink still answers with it through its thoughts, as before the export
    prompts = [policy.prompt_ids(q) for q in QUESTIONS]
    exported = Policy.load(tmp_path / "exported")
    assert exported.latent_steps == 2
    assert (exported.sample(prompts, max_new_tokens=8, greedy=True).completion_ids
            == policy.sample(prompts, max_new_tokens=8, greedy=True).completion_ids)


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    assert "no such file or folder" in one_line_error(capsys, "export", str(tmp_path / "missing"), str(tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    assert "not a checkpoint folder" in one_line_error(capsys, "export", str(tmp_path / "empty"), str(tmp_path / "o"))
    Policy.from_config(ModelConfig(kind="tiny", depth=2), torch.device("cpu")).save(tmp_path / "checkpoint")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert "not empty" in one_line_error(capsys, "export", str(tmp_path / "checkpoint"), str(tmp_path / "taken"))
