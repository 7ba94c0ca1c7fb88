"""A policy is a causal LM, its tokenizer, and how a `Problem`'s prompt becomes token ids (raw
text for models without a chat template, the chat template otherwise)."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from shrinkthink import distributed
from shrinkthink.config import ModelConfig
from shrinkthink.model import bpe_tokenizer, enable_checkpointing, load_pretrained, tiny_policy, use_attention
from shrinkthink.rollout import Samples, sample

LATENT_FILE = "latent.json"
ADAPTER_DIR = "adapter"  # a LoRA checkpoint's adapter, beside the base weights
SAMPLER_DTYPES = {"model": None, "bfloat16": torch.bfloat16}  # `Sampling.dtype`


def bfloat16_units(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively: a CUDA GPU that supports it, or a CPU with AMX
    or AVX-512 BF16 (read from Linux's /proc/cpuinfo; elsewhere assumed not). Without such units
    bfloat16 matmuls are emulated, several times slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))


def compute_dtype(setting: str, device: torch.device) -> str:
    """`Sampling.dtype` and `LearnerConfig.dtype` resolved: auto is bfloat16 where the device has
    bfloat16 units, else the model's own precision."""
    if setting != "auto":
        return setting
    return "bfloat16" if bfloat16_units(device) else "model"


def model_dtype(config: ModelConfig, device: torch.device) -> torch.dtype:
    if config.dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    # bfloat16 only where the weights that train are not bfloat16: a frozen LoRA base (peft keeps
    # the adapters in float32). Adam's steps of lr ~1e-6 vanish in bfloat16 weights.
    return torch.bfloat16 if device.type == "cuda" and config.lora is not None else torch.float32


def with_lora(model, lora, seed: int = 0):
    """`model` wrapped with trainable LoRA adapters (peft), everything else frozen."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        from shrinkthink.errors import UserError

        raise UserError("model.lora: needs peft (pip install peft, or the 'lora' extra)") from None
    torch.manual_seed(seed)  # the adapters' A matrices are random
    settings = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, settings)
    except ValueError as error:  # e.g. no module matches target_modules
        from shrinkthink.errors import UserError

        raise UserError(f"model.lora.target_modules: {str(error).splitlines()[0]}") from None


def pick_device(name: str) -> torch.device:
    """The device `name` names; on several ranks a CUDA device is this rank's own (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from shrinkthink.errors import UserError

        raise UserError("device: 'cuda' requested but no CUDA device is available")
    if name == "cuda" and distributed.launched():
        if distributed.local_rank() >= torch.cuda.device_count():
            from shrinkthink.errors import UserError

            raise UserError(f"device: rank {distributed.local_rank()} of this machine has no CUDA device of its own "
                            f"({torch.cuda.device_count()} here): start at most that many ranks a machine")
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


class Policy:
    def __init__(self, model, tokenizer, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.pad_id = tokenizer.pad_token_id
        eos = {tokenizer.eos_token_id}
        generation_eos = getattr(model.generation_config, "eos_token_id", None)
        if generation_eos is not None:
            eos |= set(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        self.eos_ids = {e for e in eos if e is not None}
        # A policy that answers through latent steps says so here: {"method": "coconut", "thoughts": n}
        # (or pause, ccot); saved beside the weights as latent.json.
        self.latent: dict | None = None

    @classmethod
    def from_config(cls, config: ModelConfig, device: torch.device, seed: int = 0,
                    corpus: Iterable[str] | None = None) -> Policy:
        """A fresh policy. A tiny model with `tokenizer: bpe` trains its merges on `corpus` (the
        task's training text: `pipeline.tokenizer_corpus`)."""
        if config.kind == "tiny":
            tokenizer = None
            if config.tokenizer == "bpe":
                if corpus is None:
                    raise ValueError("model.tokenizer 'bpe' needs a corpus to train its merges on")
                tokenizer = bpe_tokenizer(corpus, config.vocab_size)
            model, tokenizer = tiny_policy(config.depth, seed=seed, tokenizer=tokenizer)
            if config.attn_implementation is not None:
                use_attention(model, config.attn_implementation)
        else:
            model, tokenizer = load_pretrained(config.path, dtype=model_dtype(config, device),
                                               attn_implementation=config.attn_implementation)
        if config.gradient_checkpointing:
            enable_checkpointing(model)  # on the base model, before any LoRA wrapper
        if config.lora is not None:
            model = with_lora(model, config.lora, seed)
        return cls(model, tokenizer, device)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu",
             config: ModelConfig | None = None) -> Policy:
        """A saved policy; `config` (the run's model config) chooses the dtype, the attention kernel
        and gradient checkpointing. A checkpoint with an `adapter/` folder gets its LoRA adapter
        back, trainable."""
        dtype = model_dtype(config, torch.device(device)) if config is not None else torch.float32
        hf_logging.disable_progress_bar()  # a bar per loaded checkpoint is noise in `eval` and `sample`
        attention = config.attn_implementation if config is not None else None
        model, tokenizer = load_pretrained(str(path), dtype=dtype, attn_implementation=attention)
        if config is not None and config.gradient_checkpointing:
            enable_checkpointing(model)
        if (Path(path) / ADAPTER_DIR / "adapter_config.json").is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(Path(path) / ADAPTER_DIR), is_trainable=True)
        policy = cls(model, tokenizer, device)
        latent_file = Path(path) / LATENT_FILE
        if latent_file.is_file():
            policy.latent = json.loads(latent_file.read_text())
        return policy

    # --- text <-> ids -------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        if self.chat:
            return list(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.tokenizer(prompt + "\n", add_special_tokens=False).input_ids

    def completion_ids(self, completion: str) -> list[int]:
        """Target ids for supervised training: the completion, then end-of-sequence."""
        return self.tokenizer(completion, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids) if text else 0

    @torch.no_grad()
    def logprobs(self, prompts: list[list[int]], completions: list[list[int]],
                 batch_size: int = 64) -> list[list[float]]:
        """Teacher-forced log p(token) of each completion token after its prompt (the ablation
        critic's likelihood guard). Leaves the model in eval mode."""
        # imported here: the learners package imports this module
        from shrinkthink.learners.batch import completion_logprobs, pack

        if distributed.world() > 1:  # each rank its block of the rows
            rows = distributed.block(len(prompts))
            prompts, completions = prompts[rows.start : rows.stop], completions[rows.start : rows.stop]
        self.model.eval()
        out: list[list[float]] = []
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            ids, attention, predictor, _ = pack(prompts[chunk], completions[chunk], self.pad_id, self.device)
            values = completion_logprobs(self.model, ids, attention, predictor).tolist()
            out += [row[: len(c)] for row, c in zip(values, completions[chunk])]
        return distributed.gather(out)

    # --- sampling -----------------------------------------------------------------------
    @property
    def latent_steps(self) -> int:
        """Continuous thoughts per answer (0 for a policy that reasons in visible tokens)."""
        return int(self.latent.get("thoughts", 0)) if self.latent else 0

    def sample(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, greedy: bool = False, batch_size: int = 512,
               dtype: str = "model") -> Samples:
        """Completions of `prompts`; a latent policy first appends its `<bot> <thought>*n <eot>`
        block and runs the thoughts (n+1 passes), then decodes from the same KV cache. `dtype`
        (`Sampling.dtype`): "model", or "bfloat16" for bfloat16 matmuls. On several ranks, each
        samples its block of the rows and every rank gets all of them back."""
        if distributed.world() > 1:
            rows = distributed.block(len(prompts))
            mine = self._sample(prompts[rows.start : rows.stop], max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, greedy=greedy, batch_size=batch_size, dtype=dtype)
            # each rank's prompts ride along: replicated control that diverged must not go on unseen
            keys, parts = zip(*distributed.gather([(zlib.crc32(repr(prompts).encode()), mine)]))
            if len(set(keys)) > 1:
                raise RuntimeError("ranks asked to sample different prompts: their control has diverged")
            return Samples.concat(parts)
        return self._sample(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            greedy=greedy, batch_size=batch_size, dtype=dtype)

    def _sample(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
                greedy: bool, batch_size: int, dtype: str) -> Samples:
        if not prompts:
            return Samples(completion_ids=[], logprobs=[], finished=[], entropy_sum=0.0, tokens=0)
        was_training = self.model.training
        self.model.eval()
        model, generic, banned = self.model, False, frozenset()
        if self.latent and self.latent.get("method") in ("coconut", "pause"):
            from shrinkthink.latent.coconut import ContinuousThoughts, latent_prompts, latent_tokens

            tokens = latent_tokens(self.tokenizer)
            prompts = latent_prompts(prompts, tokens, self.latent_steps)
            banned = frozenset((tokens.bot, tokens.eot, tokens.thought))  # markers, never text
            # pause tokens are ordinary prompt tokens: the model's own decoder runs them
            if self.latent_steps and self.latent["method"] == "coconut":
                model, generic = ContinuousThoughts(self.model, tokens.thought), True
        elif self.latent and self.latent.get("method") == "ccot":
            from shrinkthink.latent.ccot import CompressedThoughts
            from shrinkthink.latent.coconut import latent_tokens

            tokens = latent_tokens(self.tokenizer)
            model, generic = CompressedThoughts(self.model, tokens, self.latent, self.pad_id), True
            # the contemplation tokens first (as many as the stop rule gives each), then the answer
            # from a prefill of `prompt <bot> <thought>*k <eot>` whose thoughts are those states
            prompts = model.contemplate(prompts, batch_size)
            banned = frozenset((tokens.bot, tokens.eot, tokens.thought))  # markers, never text
        parts = [
            sample(model, prompts[i : i + batch_size], eos_ids=self.eos_ids, pad_id=self.pad_id,
                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
                   generic=generic, dtype=SAMPLER_DTYPES[compute_dtype(dtype, self.device)], banned_ids=banned)
            for i in range(0, len(prompts), batch_size)
        ]
        self.model.train(was_training)
        return Samples.concat(parts)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        hf_logging.disable_progress_bar()  # one bar per checkpoint would drown the stage's own
        if hasattr(self.model, "peft_config"):
            # LoRA: the frozen base as a plain Hugging Face folder, the adapter beside it (exact
            # on resume; merging would make the base and the optimizer's adapter state disagree)
            base = self.model.get_base_model()
            weights = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
            base.save_pretrained(path, state_dict=weights, safe_serialization=True)
            self.model.save_pretrained(Path(path) / ADAPTER_DIR, safe_serialization=True)
        else:
            self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        if self.latent:
            (Path(path) / LATENT_FILE).write_text(json.dumps(self.latent))
