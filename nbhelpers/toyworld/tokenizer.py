"""A CLIP BPE tokenizer whose vocabulary is built locally from the toy world's words.

It is a real ``transformers.CLIPTokenizer`` (Stable Diffusion's layout: ``</w>`` end-of-word
suffix, ``<|startoftext|>``/``<|endoftext|>``), with every single character as a fallback token,
every world word as one token, except a few words deliberately split into several BPE pieces so
that multi-token words are exercised everywhere (``crimson`` = ``crim`` + ``son``).
"""
from __future__ import annotations

import string

from .world import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words deliberately made of several BPE pieces.
SPLIT_WORDS = {"crimson": ("crim", "son"), "triangle": ("tri", "angle"), "teacher": ("teach", "er")}
# Extra words a user may type that carry no meaning in the world (a neutral replacement token).
EXTRA_WORDS = ("thing", "photo", "an")
CHARACTERS = string.ascii_lowercase + string.digits + ".,!?;:'-_\"()&/"


def _pieces(word: str) -> list[str]:
    parts = list(SPLIT_WORDS.get(word, (word,)))
    parts[-1] = parts[-1] + "</w>"
    return parts


def _symbols(piece: str) -> list[str]:
    """The characters of a piece, the last carrying ``</w>`` when the piece ends a word."""
    if piece.endswith("</w>"):
        body = piece[: -len("</w>")]
        return list(body[:-1]) + [body[-1] + "</w>"]
    return list(piece)


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair of lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def build_vocab_and_merges(words: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) for the CLIP tokenizer: characters, then every word's pieces."""
    words = list(words or (vocabulary() + list(EXTRA_WORDS)))
    tokens = [BOS, EOS]
    for c in CHARACTERS:
        tokens += [c, c + "</w>"]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    targets = {}
    for w in words:
        # a word's pieces: each piece is built from its characters left to right
        for piece in _pieces(w):
            targets[piece] = _symbols(piece)
    for _ in range(10):  # repair loop: add merges until every piece tokenizes to itself
        changed = False
        for piece, syms in targets.items():
            got = _apply_bpe(syms, ranks)
            while len(got) > 1:
                pair = (got[0], got[1])
                ranks[pair] = len(merges)
                merges.append(pair)
                got = _apply_bpe(syms, ranks)
                changed = True
        if not changed:
            break
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    for piece in targets:
        if piece not in tokens:
            tokens.append(piece)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_tokenizer(model_max_length: int = 24):
    """A ``transformers.CLIPTokenizer`` for the toy world."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges()
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return tok


def expected_pieces(word: str) -> list[str]:
    """The BPE pieces a world word must tokenize to (for tests)."""
    return _pieces(word)


def build_t5_tokenizer(model_max_length: int = 32):
    """A ``transformers.T5TokenizerFast`` for the toy world, built locally: a sentencepiece-style Unigram
    model (``▁`` marks a word start) whose vocabulary is every world word as one piece and every
    character as a fallback, with T5's special tokens (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) and T5's
    layout (no start token; ``</s>`` appended)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = list(dict.fromkeys(vocabulary() + list(EXTRA_WORDS)))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -8.0) for c in CHARACTERS] + [("\u2581" + c, -8.0) for c in CHARACTERS]
    pieces += [("\u2581" + w, -1.0) for w in words]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tk.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=model_max_length)
