"""The CLIP tokenizer built from open_clip's BPE file vs an independent simple_tokenizer-style reference."""
from __future__ import annotations

import gzip
import html

import pytest
import regex
from transformers import CLIPTokenizerFast

from clipvip.tokenizer import build_clip_tokenizer, clip_bpe_path

SENTENCES = [
    "a photo of a cat",
    "A man is playing guitar, and singing!",
    "The 3 dogs ran 25.5 km in 2019...",
    "it's what they'll do -- isn't it?",
    "email: someone@example.com #tags (brackets) [x]",
    "Ünïcödé café naïve — déjà vu",
    "   multiple    spaces\tand\ttabs  ",
]


class ReferenceCLIPBPE:
    """OpenAI's simple_tokenizer algorithm, written out plainly (ftfy-free basic cleaning)."""

    def __init__(self, bpe_path):
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(2**8):
            if b not in bs:
                bs.append(b)
                cs.append(2**8 + n)
                n += 1
        self.byte_encoder = dict(zip(bs, [chr(c) for c in cs]))
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text):
        text = " ".join(html.unescape(html.unescape(text)).split()).strip().lower()
        ids = [self.encoder["<|startoftext|>"]]
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return ids + [self.encoder["<|endoftext|>"]]


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def test_known_ids(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408 and tokenizer.pad_token_id == 49407


def test_matches_reference_bpe(tokenizer):
    ref = ReferenceCLIPBPE(clip_bpe_path())
    for sentence in SENTENCES:
        assert tokenizer(sentence).input_ids == ref.encode(sentence), sentence


def test_save_and_reload_and_truncation(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizerFast.from_pretrained(tmp_path)
    batch = again(SENTENCES, padding="max_length", truncation=True, max_length=12)
    assert all(len(ids) == 12 for ids in batch.input_ids)
    assert batch.input_ids[0][:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert batch.attention_mask[0] == [1] * 7 + [0] * 5
    truncated = batch.input_ids[1]
    assert truncated[0] == 49406 and truncated[-1] == 49407  # EOT kept when truncating
    assert again.model_max_length == 77


def test_bpe_path_is_the_wheel_file():
    path = clip_bpe_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.parent.name == "open_clip"
