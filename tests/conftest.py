"""Shared test setup: one CPU thread (the machine is shared), no hub access, quiet transformers."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

import torch  # noqa: E402

torch.set_num_threads(1)
