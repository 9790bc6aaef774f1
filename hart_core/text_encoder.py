"""Prompts -> text-context embeddings with any local Hugging Face decoder LM (HART uses Qwen2-1.5B).

The context is the LM's last hidden state (after its final norm) for `max_length` right-padded
slots, a validity mask, and 1-D positions cumsum(mask) - 1, as the reference `encode_prompts` builds
them. With a system prompt the LM reads [system prompt | prompt] and only the prompt's states are
kept.
"""

from __future__ import annotations

import os

import torch

# The system prompt of the released sampler (`use_llm_system_prompt=True` there by default).
HART_SYSTEM_PROMPT = """Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for image generation.

Examples:
- User Prompt: A cat sleeping -> A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.
- User Prompt: A busy city street -> A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.

Please generate only the enhanced description for the prompt below and DO NOT include any additional sentences. Start your response with "Enhanced Prompt:".

User Prompt:\n"""  # noqa: E501


class TextEncoder:
    def __init__(self, model, tokenizer, max_length: int = 300, system_prompt: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.system_prompt = system_prompt
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        max_length: int = 300,
        system_prompt: str | None = HART_SYSTEM_PROMPT,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> TextEncoder:
        """Load a local LM folder (never downloads)."""
        from transformers import AutoModel, AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"text encoder folder {path} does not exist")
        # never the code a folder's auto_map names (transformers would otherwise ask, or run it)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        model = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False, dtype=dtype).to(device)
        return cls(model, tokenizer, max_length, system_prompt)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns context [B, max_length, hidden] (fp32), mask [B, max_length] bool, positions."""
        if isinstance(prompts, str):
            prompts = [prompts]
        for p in prompts:
            if not p or not p.strip():
                raise ValueError("empty prompt: give the image a description")
        ids = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        for p, i in zip(prompts, ids, strict=True):
            if len(i) > self.max_length:
                raise ValueError(
                    f"prompt is {len(i)} tokens, longer than the {self.max_length}-token context: "
                    f"{p[:60]!r}..."
                )
        pad = self.tokenizer.pad_token_id
        tokens = torch.full((len(prompts), self.max_length), pad, dtype=torch.long)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        for row, i in enumerate(ids):
            tokens[row, : len(i)] = torch.tensor(i)
            mask[row, : len(i)] = True
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        positions = mask.long().cumsum(1) - 1
        if self.system_prompt:
            sys_ids = torch.tensor(self.tokenizer(self.system_prompt)["input_ids"], device=self.device)
            sys_ids = sys_ids.expand(len(prompts), -1)
            full = torch.cat((sys_ids, tokens), dim=1)
            full_mask = torch.cat((torch.ones_like(sys_ids, dtype=torch.bool), mask), dim=1)
            hidden = self.model(input_ids=full, attention_mask=full_mask).last_hidden_state
            hidden = hidden[:, sys_ids.shape[1] :]
        else:
            hidden = self.model(input_ids=tokens, attention_mask=mask).last_hidden_state
        return hidden.float(), mask, positions
