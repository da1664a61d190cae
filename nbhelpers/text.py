"""Words and tokens of a prompt: which tokens make up each word, and removing a word.

A *word* is a maximal run of letters, digits and apostrophes (case-insensitive); punctuation is
not part of any word. A word may be several BPE tokens (``crimson`` = ``crim`` + ``son``) and may
occur several times. Token indices count the start token, so they index the text encoder's output
directly.

Removing a word (for conditional terms such as i(x; w | rest of prompt)) follows one of two
documented policies:

- ``"delete"`` (default; Kong et al.'s localisation data): the word is cut out and spaces closed up,
  so "a red circle" without "red" is "a circle";
- ``"replace"`` (their editing script): the word is replaced by a neutral token (``"_"`` by
  default), which keeps every other token at its position.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from .errors import EmptyPromptError, PromptError, PromptTooLongError, WordNotInPromptError

WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)
REMOVAL_POLICIES = ("delete", "replace")


@dataclass(frozen=True)
class Word:
    """One occurrence of a word: its text (lower case), character span and token indices."""

    text: str
    occurrence: int  # 0 for the first time this word appears in the prompt, 1 for the second ...
    start: int
    end: int
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class TokenizedPrompt:
    prompt: str
    input_ids: tuple[int, ...]  # with start and end tokens, not padded
    tokens: tuple[str, ...]
    words: tuple[Word, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def find(self, word: str, occurrence: int | None = None) -> list[Word]:
        """Occurrences of ``word`` (one word or a phrase of several); all of them unless
        ``occurrence`` picks one. Raises :class:`WordNotInPromptError` with the prompt's words."""
        return find_word(self, word, occurrence)

    def token_indices(self, word: str, occurrence: int | None = None) -> list[int]:
        """Sorted token indices covered by ``word`` (all occurrences unless one is picked)."""
        return sorted({t for w in self.find(word, occurrence) for t in w.tokens})


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be a string, got {type(prompt).__name__} ({prompt!r})")
    return prompt


def tokenize(tokenizer, prompt: str, max_length: int | None = None) -> TokenizedPrompt:
    """Tokenize ``prompt`` and map every word to its tokens. Raises :class:`PromptTooLongError`
    when the prompt needs more than ``max_length`` tokens (default: the tokenizer's limit)."""
    check_prompt(prompt)
    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True, truncation=False, verbose=False)
    ids = list(enc["input_ids"])
    offsets = list(enc["offset_mapping"])
    limit = max_length or tokenizer.model_max_length
    if len(ids) > limit:
        raise PromptTooLongError(
            f"the prompt {prompt!r} needs {len(ids)} tokens (with start and end tokens) but the text encoder "
            f"takes at most {limit}; shorten it by about {len(ids) - limit} token(s)")
    specials = set(tokenizer.all_special_ids) - {getattr(tokenizer, "unk_token_id", None)}  # spans drop BOS/EOS/pad
    offsets = [_trimmed(prompt, s, e) for s, e in offsets]  # sentencepiece pieces carry their leading space
    words = [Word(w.text, w.occurrence, w.start, w.end,
                  tuple(i for i, (s, e) in enumerate(offsets)
                        if e > s and s >= w.start and e <= w.end and ids[i] not in specials))
             for w in _word_spans(prompt)]
    return TokenizedPrompt(prompt, tuple(ids), tuple(tokenizer.convert_ids_to_tokens(ids)), tuple(words))


def _trimmed(prompt: str, start: int, end: int) -> tuple[int, int]:
    """A token's character span without leading whitespace (T5's ``▁red`` covers the space before it)."""
    while start < end and prompt[start].isspace():
        start += 1
    return start, end


class UnknownWordWarning(UserWarning):
    """A prompt holds text the tokenizer does not know (unknown tokens, or a word spelled out letter by letter)."""


class RepeatedWordWarning(UserWarning):
    """A word asked for occurs several times in its prompt and every occurrence is used (say which with
    ``occurrence=``)."""


def _piece(token: str) -> str:
    return token.removesuffix("</w>").removeprefix("\u2581")  # CLIP word end, sentencepiece word start


def unknown_words(tokenizer, tp: TokenizedPrompt) -> dict[str, tuple[str, ...]]:
    """Words of ``tp`` the tokenizer does not know, with the tokens each became: a word holding the unknown
    token, or a word of three or more characters spelled out one character per token (a word the model's
    vocabulary lacks, e.g. "rouge" on the toy model, whose tokenizer knows only the world's words). Text
    outside words that became unknown tokens (an emoji) is listed under ``"(outside words)"``."""
    unk = getattr(tokenizer, "unk_token_id", None)
    specials = {i for i, t in enumerate(tp.input_ids) if t in set(tokenizer.all_special_ids) and t != unk}
    specials |= {0, tp.n_tokens - 1} if tp.tokens and tp.tokens[0] == getattr(tokenizer, "bos_token", None) else set()
    inner = [i for i in range(tp.n_tokens) if i not in specials]  # CLIP's unk is its end token: never inner
    out: dict[str, tuple[str, ...]] = {}
    in_words = set()
    for w in tp.words:
        in_words.update(w.tokens)
        pieces = tuple(tp.tokens[i] for i in w.tokens)
        has_unk = unk is not None and any(tp.input_ids[i] == unk for i in w.tokens if i in inner)
        spelled = len(w.text) >= 3 and len(w.tokens) == len(w.text) and all(len(_piece(p)) == 1 for p in pieces)
        if (has_unk or spelled or not w.tokens) and w.text not in out:
            out[w.text] = pieces
    stray = tuple(tp.tokens[i] for i in inner if unk is not None and tp.input_ids[i] == unk and i not in in_words)
    if stray:
        out["(outside words)"] = stray
    return out


def warn_unknown_words(tokenizer, tp: TokenizedPrompt) -> None:
    """Warn (:class:`UnknownWordWarning`, once per word and location) about :func:`unknown_words`: values for
    such words are measured on tokens the model never learned as a word."""
    for word, pieces in unknown_words(tokenizer, tp).items():
        warnings.warn(f"{word!r} in the prompt {tp.prompt!r} is not a word this tokenizer knows: it became the "
                      f"tokens {' '.join(pieces) or '(none)'}. Results for it describe those tokens, which the model "
                      "may never have learned as a word; use words of the model's vocabulary",
                      UnknownWordWarning, stacklevel=3)


def _word_spans(prompt: str) -> list[Word]:
    """The prompt's words with their character spans and occurrence numbers (no tokens)."""
    counts: dict[str, int] = {}
    words = []
    for m in WORD_RE.finditer(prompt):
        text = m.group().lower()
        words.append(Word(text, counts.get(text, 0), m.start(), m.end(), ()))
        counts[text] = counts.get(text, 0) + 1
    return words


def _split_words(word: str) -> list[str]:
    parts = [m.group().lower() for m in WORD_RE.finditer(word)]
    if not parts:
        raise EmptyPromptError(f"no word given ({word!r}); pass a word of the prompt such as 'red'")
    return parts


def find_word(tp: TokenizedPrompt, word: str, occurrence: int | None = None) -> list[Word]:
    """See :meth:`TokenizedPrompt.find`. For a phrase, the returned Word spans the whole phrase."""
    if not tp.prompt.strip():
        raise EmptyPromptError(f"the prompt is empty, so it has no word {word!r}; use a caption such as "
                               "'a red circle on the left'")
    parts = _split_words(word)
    texts = [w.text for w in tp.words]
    hits = []
    for i in range(len(texts) - len(parts) + 1):
        if texts[i : i + len(parts)] == parts:
            ws = tp.words[i : i + len(parts)]
            hits.append(Word(" ".join(parts), len(hits), ws[0].start, ws[-1].end,
                             tuple(t for w in ws for t in w.tokens)))
    if not hits:
        raise WordNotInPromptError(
            f"{word!r} is not a word of the prompt {tp.prompt!r}; its words are: {', '.join(dict.fromkeys(texts))}")
    if occurrence is not None:
        if not 0 <= occurrence < len(hits):
            raise WordNotInPromptError(
                f"{word!r} occurs {len(hits)} time(s) in {tp.prompt!r}; occurrence must be in 0..{len(hits) - 1}")
        return [hits[occurrence]]
    return hits


def remove_word(prompt: str, word: str, policy: str = "delete", replacement: str = "_",
                occurrence: int | None = None, tokenizer=None) -> str:
    """``prompt`` with ``word`` (every occurrence unless one is picked) removed by ``policy``
    ("delete" or "replace", see the module docstring). Raises if the word is not in the prompt."""
    if policy not in REMOVAL_POLICIES:
        raise PromptError(f"policy={policy!r} is not a removal policy; use one of {REMOVAL_POLICIES}")
    check_prompt(prompt)
    if tokenizer is not None:
        tp = tokenize(tokenizer, prompt)
    else:  # character spans only
        tp = TokenizedPrompt(prompt, (), (), tuple(_word_spans(prompt)))
    hits = find_word(tp, word, occurrence)
    out = prompt
    for w in sorted(hits, key=lambda w: -w.start):
        out = out[: w.start] + ("" if policy == "delete" else replacement) + out[w.end :]
    if policy == "delete":
        out = re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r"\s{2,}", " ", out)).strip()
    return out
