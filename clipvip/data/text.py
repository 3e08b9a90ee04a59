"""Tokenisation with the model folder's CLIP tokenizer, and the collate function that does it per batch.

Usage:
    >>> tok = load_tokenizer("results/pretrained/clip")              # CLIPTokenizerFast from the folder
    >>> enc = tokenize(tok, ["a dog runs", "a cat"], max_len=50)     # input_ids / attention_mask [2, 50]
    >>> collate = TokenizingCollator(tok, max_len=50)                # DataLoader collate_fn
    >>> batch = collate([dataset[0], dataset[1]])

Tokenising in the collate (one batched fast-tokenizer call) is cheaper than per item, and the tokenizer is
small enough to travel to fork-started workers with the collator.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import torch
from torch.utils.data import default_collate

# Item keys holding text, and the prefix of the tensors their tokenisation produces in the batch.
TEXT_KEYS = {"text": "", "caption": "caption_"}


def load_tokenizer(model_dir: str | PathLike):
    """``CLIPTokenizerFast.from_pretrained(model_dir)``; model folders carry their tokenizer files."""
    from transformers import CLIPTokenizerFast

    model_dir = Path(model_dir)
    names = ("tokenizer.json", "vocab.json")
    if not model_dir.is_dir() or not any((model_dir / n).exists() for n in names):
        raise FileNotFoundError(
            f"no CLIP tokenizer in {model_dir} (expected tokenizer.json or vocab.json + merges.txt); "
            "model folders must be saved together with their tokenizer"
        )
    return CLIPTokenizerFast.from_pretrained(model_dir)


def tokenize(tokenizer, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """Pad/truncate to ``max_len``: ``{"input_ids", "attention_mask"}`` int64 ``[B, max_len]``.

    CLIP's text tower pools at the end-of-text token, so after truncation EOT must still close every
    sequence. HF's CLIP fast tokenizer already truncates before adding specials; the fix-up below makes it
    hold for any tokenizer folder (one saved without its post-processor would lose the EOT).
    """
    if max_len < 2:
        raise ValueError(f"max_len must leave room for start and end tokens, got {max_len}")
    enc = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    eot = tokenizer.eos_token_id
    last = mask.sum(dim=1) - 1
    rows = torch.arange(len(ids))
    lost = ids[rows, last] != eot
    if lost.any():
        if (last[lost] != max_len - 1).any():
            raise ValueError("the tokenizer does not append <|endoftext|>; was it saved without its post-processor?")
        # Truncation cut it off: the last kept token becomes EOT again.
        ids[rows[lost], last[lost]] = eot
    return {"input_ids": ids, "attention_mask": mask}


class TokenizingCollator:
    """Stack tensor fields, keep string fields as lists, and tokenise the text fields of ``TEXT_KEYS``.

    ``text`` becomes ``input_ids`` / ``attention_mask``; ``caption`` becomes ``caption_input_ids`` /
    ``caption_attention_mask``. The raw strings stay in the batch for logging and duplicate detection.
    """

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer = tokenizer
        self.max_len = int(max_len)

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if isinstance(values[0], torch.Tensor):
                # default_collate stacks straight into shared memory inside a worker: no extra copy of the
                # (uint8) video batch when it is handed to the main process.
                batch[key] = default_collate(values)
            elif isinstance(values[0], (int, float)):
                batch[key] = torch.tensor(values)
            else:
                batch[key] = values
        for key, prefix in TEXT_KEYS.items():
            if key in batch:
                for name, tensor in tokenize(self.tokenizer, batch[key], self.max_len).items():
                    batch[prefix + name] = tensor
        return batch
