"""The real CLIP BPE tokenizer, built offline from the vocabulary file in the ``open_clip_torch`` wheel.

Usage:
    from clipvip.tokenizer import build_clip_tokenizer
    tok = build_clip_tokenizer(model_max_length=77)
    tok(["a photo of a cat"]).input_ids   # [[49406, 320, 1125, 539, 320, 2368, 49407]]
    tok.save_pretrained(model_dir)        # then CLIPTokenizerFast.from_pretrained(model_dir)

``open_clip`` is never imported (it would pull torchvision etc.); its package directory is located with
``importlib.util.find_spec``. Conversion (identical ids to open_clip's/OpenAI's tokenizer): merges are lines
1..48894 of ``bpe_simple_vocab_16e6.txt.gz`` (line 0 is a header); the vocabulary is the 256 byte-unicode
symbols, the same with ``</w>``, every merge joined, then ``<|startoftext|>`` (49406), ``<|endoftext|>`` (49407).
transformers 5 trap: the constructor takes ``vocab=``/``merges=`` objects; ``vocab_file=`` is silently ignored.
"""
from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizerFast

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48894: CLIP's vocab is 49408 = 2·256 bytes + merges + 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def clip_bpe_path() -> Path:
    """Path of ``open_clip/bpe_simple_vocab_16e6.txt.gz`` inside the installed ``open_clip_torch`` wheel."""
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / BPE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{BPE_FILE} not found: install the open_clip_torch wheel without dependencies "
        "(`pip install --no-deps open_clip_torch`); it only provides the CLIP BPE vocabulary file"
    )


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible byte -> printable unicode map (GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab token -> id, merges in rank order) exactly as OpenAI's ``SimpleTokenizer`` builds them."""
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizerFast:
    """A ``CLIPTokenizerFast`` with the real 49408-token CLIP vocabulary (pad = ``<|endoftext|>``)."""
    vocab, merges = clip_vocab_and_merges()
    tokenizer = CLIPTokenizerFast(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
    if len(tokenizer) != 49408 or tokenizer.convert_tokens_to_ids(EOS) != 49407:
        raise RuntimeError(f"CLIP tokenizer conversion failed: {len(tokenizer)} tokens")
    return tokenizer


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_wordpiece_tokenizer(corpus, vocab_size: int, extra_specials: tuple[str, ...] = (), **special_tokens):
    """A lower-casing WordPiece ``BertTokenizerFast`` (``bert-base-uncased``'s kind) whose vocabulary is learnt
    from the texts of ``corpus`` (at most ``vocab_size`` entries, BERT's five specials first, then
    ``extra_specials`` such as BLIP's ``[DEC]``). ``special_tokens`` (``bos_token="[DEC]"``, ...) name roles."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(list(corpus), vocab_size=vocab_size, min_frequency=1,
                                  special_tokens=list(BERT_SPECIALS + tuple(extra_specials)))
    return BertTokenizerFast(vocab=wordpiece.get_vocab(), do_lower_case=True, **special_tokens)
