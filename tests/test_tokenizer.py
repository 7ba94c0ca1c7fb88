"""The tiny model's tokenizers: characters, or byte-pair merges trained on the task's own text."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from shrinkthink.config import RunConfig
from shrinkthink.model import bpe_tokenizer, char_tokenizer
from shrinkthink.pipeline import run_pipeline, tokenizer_corpus
from shrinkthink.policy import Policy
from shrinkthink.tasks import make_task


def prosqa_config(**model) -> RunConfig:
    return RunConfig.model_validate({
        "name": "bpe", "seed": 0, "threads": 1,
        "model": {"kind": "tiny", "depth": 1, "tokenizer": "bpe", **model},
        "task": {"name": "prosqa", "options": {"num_concepts": 6, "extra_edges": 2},
                 "eval_levels": [1, 2], "eval_problems": 4},
        "stages": [{"name": "cot", "kind": "warmstart", "levels": [1], "steps": 4, "batch_size": 8,
                    "warmup_steps": 1, "digression_rate": 0.0, "eval_every": 4, "eval_problems": 4}],
    })


def test_bpe_merges_whole_words_keeps_digits_apart_and_loses_nothing() -> None:
    config = prosqa_config()
    task = make_task("prosqa", config.task.options)
    tokenizer = bpe_tokenizer(tokenizer_corpus(config, task, per_level=300), config.model.vocab_size)
    heldout = task.problems(2, 5, "test", seed=0)
    texts = [p.prompt + "\n" + task.demonstration(p, random.Random(0), 0.0) for p in heldout]
    texts += ["12+7=19\n19+3=22", "Every zzqx is a Qwerty~ {odd} text, with [brackets] & 0.5%."]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    prompt = texts[0]
    bpe_count = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    char_count = len(char_tokenizer()(prompt, add_special_tokens=False).input_ids)
    assert bpe_count * 2.5 < char_count  # concept names and function words are one token each
    assert tokenizer.tokenize("Every fim is a yot.") == ["Every", " fim", " is", " a", " yot", "."]
    assert tokenizer.tokenize("12+7=19") == list("12+7=19")  # digits never merge
    # the merges are a function of the corpus, so a rerun builds the same vocabulary
    again = bpe_tokenizer(tokenizer_corpus(config, task, per_level=300), config.model.vocab_size)
    assert again.get_vocab() == tokenizer.get_vocab()


def test_the_corpus_is_training_text_of_every_named_level() -> None:
    config = prosqa_config()
    config.task.eval_levels = [1, 3]
    task = make_task("prosqa", config.task.options)
    texts = list(tokenizer_corpus(config, task, per_level=20))
    assert len(texts) == 60  # levels 1, 2 (between the named ones) and 3
    test = {p.prompt for level in (1, 2, 3) for p in task.problems(level, 50, "test", seed=0)}
    assert not any(text.split("?\n")[0] + "?" in test for text in texts)


def test_a_bpe_run_saves_its_tokenizer_with_the_checkpoint(tmp_path: Path) -> None:
    config = prosqa_config(vocab_size=600)
    summary = run_pipeline(config, run_dir=str(tmp_path / "run"), progress=False)
    assert summary["stages"][0]["accuracy"] >= 0
    task = make_task("prosqa", config.task.options)
    built = bpe_tokenizer(tokenizer_corpus(config, task), 600)
    saved = Policy.load(tmp_path / "run" / "checkpoints" / "cot", torch.device("cpu"))
    assert saved.tokenizer.get_vocab() == built.get_vocab()
    assert len(built) == 600 and saved.model.get_input_embeddings().num_embeddings == 600
    text = task.problems(2, 1, "test", seed=0)[0].prompt
    assert saved.tokenizer(text).input_ids == built(text).input_ids
