"""A CLIP tokenizer built from a dataset's captions, for text-to-image models trained here.

Real Stable Diffusion checkpoints ship CLIP's 49k-token BPE; a model trained from scratch on a
small captioned dataset needs only its words. This builds a genuine byte-pair vocabulary in
CLIP's format (end-of-word ``</w>``, merges file): every character a caption can contain is a
token, and each caption word gets the merge chain that makes it one token, most frequent words
first. Words it never saw still tokenize (into characters), so any prompt is accepted.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP lower-cases and splits on words, digits and punctuation; the alphabet covers what that leaves.
_ALPHABET = string.ascii_lowercase + string.digits + string.punctuation
_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def caption_words(captions: Iterable[str]) -> Counter[str]:
    words: Counter[str] = Counter()
    for caption in captions:
        words.update(_WORD.findall(caption.lower()))
    return words


def build_caption_tokenizer(captions: Iterable[str], max_length: int = 16) -> Any:
    """A ``transformers.CLIPTokenizer`` whose vocabulary is the captions' words plus characters.

    Token 0 is ``<|startoftext|>`` and token 1 ``<|endoftext|>`` (also the padding token, as
    in CLIP); ``max_length`` includes both.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add(BOS)
    add(EOS)
    for c in _ALPHABET:
        add(c)
    for c in _ALPHABET:
        add(c + "</w>")
    seen_merges: set[tuple[str, str]] = set()
    for word, _ in sorted(caption_words(captions).items(), key=lambda kv: (-kv[1], kv[0])):
        parts = [*word[:-1], word[-1] + "</w>"]
        # Left to right: "seven" -> s+e, se+v, sev+e, seve+n</w>. Each word's chain is its own,
        # so one word's merges never change how another tokenizes.
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in seen_merges:
                seen_merges.add(pair)
                merges.append(pair)
            add(pair[0] + pair[1])
            parts = [pair[0] + pair[1], *parts[2:]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
