"""Export a checkpoint as a plain Hugging Face folder, which
`transformers.AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`
load with nothing of shrinkthink installed.

    shrinkthink export runs/<run>/checkpoints/<stage> OUT            # full weights
    shrinkthink export runs/<run>/checkpoints/<stage> OUT --merge    # LoRA: the adapter merged in

A stage's checkpoint is a Hugging Face folder already (config.json, model.safetensors, the
tokenizer's files); export loads them with transformers alone and saves them again, without the
optimizer state a resumable checkpoint has beside them. A LoRA checkpoint holds the frozen base
weights and its adapter in `adapter/`: plain transformers would load the base alone, so it needs
`--merge`, which folds the adapter into the weights (peft's `merge_and_unload`).

Prompts, as `Policy.prompt_ids` builds them: a tokenizer with a chat template (a pretrained
model) gets the question as a user turn, `apply_chat_template(..., add_generation_prompt=True)`;
one without (the tiny model) gets `bos_token + question + "\\n"`, tokenized with
`add_special_tokens=False`. The answer is what greedy decoding writes before `eos_token`.

A COCONUT checkpoint (`latent.json` says `"method": "coconut"`) cannot answer through plain
`generate`, whose every input is a token. Its weights and tokenizer export as any other's, with
latent.json kept, and at inference it needs:
  - its marker tokens `<bot>`, `<eot>` and `<thought>`, in the exported tokenizer's vocabulary;
  - the prompt ids, then `<bot>`, then `<thought>` as many times as latent.json's `thoughts`,
    then `<eot>`;
  - at each `<thought>` position, in place of its token's embedding, the last hidden state (after
    the final norm) of the position before it, so n thoughts take n+1 forward passes over one KV
    cache; where config.json has `coconut_thought_norm`, that state is first rescaled to this L2
    norm;
  - then decoding from after `<eot>`, never choosing the three markers.
`shrinkthink.latent.coconut.ContinuousThoughts` is that loop around any causal LM. A pause-token
checkpoint (`"method": "pause"`) answers through plain `generate` on the same prompt block, whose
`<thought>` tokens keep their own embeddings; an iCoT checkpoint (`"method": "icot"`) on the prompt alone.
A CCoT checkpoint (`"method": "ccot"`) feeds each contemplation position the layer-`layer` state of the
position before it and stops by latent.json's rule: `shrinkthink.latent.ccot.CompressedThoughts` is that loop.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from shrinkthink.errors import UserError


@dataclass(frozen=True)
class Exported:
    path: Path
    merged: bool  # a LoRA adapter was folded into the weights
    latent: dict | None  # latent.json, for a policy that answers through latent reasoning

    @property
    def coconut(self) -> bool:
        return bool(self.latent) and self.latent.get("method") == "coconut"


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, merge: bool = False) -> Exported:
    """Write `checkpoint`'s weights and tokenizer to the new folder `out` as a plain Hugging Face
    checkpoint; `merge` folds a LoRA adapter into the weights (a LoRA checkpoint needs it)."""
    from shrinkthink.policy import ADAPTER_DIR, LATENT_FILE

    source, target = Path(checkpoint), Path(out)
    if not (source / "config.json").is_file():
        raise UserError(f"export: '{checkpoint}' is not a checkpoint folder (no config.json)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"export: '{out}' exists and is not empty; name a new folder")
    lora = (source / ADAPTER_DIR / "adapter_config.json").is_file()
    if lora and not merge:
        raise UserError(f"export: '{checkpoint}' is a LoRA checkpoint, whose adapter plain transformers would "
                        "leave out; add --merge to fold it into the weights")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    if lora:
        try:
            from peft import PeftModel
        except ImportError:
            raise UserError("export --merge: needs peft (pip install peft, or the 'lora' extra)") from None
        dtype = model.dtype
        # a bfloat16 base (LoRA on CUDA) gets the update computed in float32 and rounded once
        model = PeftModel.from_pretrained(model.to(torch.float32), str(source / ADAPTER_DIR))
        model = model.merge_and_unload().to(dtype)

    tmp = target.with_name(f".{target.name}.tmp")  # a failure part-way leaves no half-written `out`
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    latent = None
    if (source / LATENT_FILE).is_file():
        shutil.copy2(source / LATENT_FILE, tmp / LATENT_FILE)
        latent = json.loads((source / LATENT_FILE).read_text())
    if target.is_dir():
        target.rmdir()  # empty, checked above
    os.replace(tmp, target)
    return Exported(path=target, merged=lora, latent=latent)


def coconut_note(exported: Exported) -> str:
    """The one line `shrinkthink export` says about a COCONUT checkpoint."""
    thoughts = exported.latent.get("thoughts", 0) if exported.latent else 0
    return (f"note: a COCONUT checkpoint ({thoughts} continuous thoughts): plain generate cannot answer with it; "
            "`shrinkthink export --help` says what it needs at inference (latent.json is kept)")
