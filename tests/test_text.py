import pytest

from nbhelpers.errors import EmptyPromptError, PromptTooLongError, WordNotInPromptError
from nbhelpers.text import remove_word, tokenize
from nbhelpers.toyworld import world
from nbhelpers.toyworld.tokenizer import build_tokenizer, expected_pieces


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(24)


def test_tokenizer_has_the_world_vocabulary(tok):
    # the transformers-5 pitfall: vocab_file= is ignored and leaves 3 tokens
    assert len(tok) > 100
    for w in world.vocabulary():
        toks = tok.convert_ids_to_tokens(tok(w, add_special_tokens=False).input_ids)
        assert toks == expected_pieces(w), w
    assert tok.unk_token_id not in tok("a big red circle on the left").input_ids[1:-1]


def test_tokenizer_round_trip(tok, tmp_path):
    from transformers import CLIPTokenizer

    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    text = "A crimson red triangle, left of a small blue bat."
    assert again(text).input_ids == tok(text).input_ids


def test_word_spans_multi_token_repeated_punctuation_case(tok):
    tp = tokenize(tok, "A Crimson red triangle, left of a crimson square.")
    first, second = tp.find("crimson")
    assert len(first.tokens) == 2 and len(second.tokens) == 2
    assert [tp.tokens[i] for i in first.tokens] == ["crim", "son</w>"]
    assert tp.find("crimson", occurrence=1) == [second]
    assert [tp.tokens[i] for i in tp.find("triangle")[0].tokens] == ["tri", "angle</w>"]
    # punctuation is not part of the word; the start token is index 0
    assert tp.tokens[tp.find("triangle")[0].tokens[-1] + 1] == ",</w>"
    assert tp.token_indices("a") == [1, 10]  # BOS a crim son red tri angle , left of a
    assert tp.find("crimson red")[0].tokens == first.tokens + tp.find("red")[0].tokens


def test_word_errors(tok):
    tp = tokenize(tok, "a red circle")
    with pytest.raises(WordNotInPromptError, match="its words are: a, red, circle"):
        tp.find("dog")
    with pytest.raises(WordNotInPromptError, match="occurs 1 time"):
        tp.find("red", occurrence=2)
    with pytest.raises(EmptyPromptError):
        tokenize(tok, "").find("red")
    with pytest.raises(PromptTooLongError, match="at most 24"):
        tokenize(tok, " ".join(["red"] * 30))


def test_remove_word_policies(tok):
    p = "a crimson red circle, on the left"
    assert remove_word(p, "red") == "a crimson circle, on the left"
    assert remove_word(p, "circle") == "a crimson red, on the left"
    assert remove_word(p, "crimson red", tokenizer=tok) == "a circle, on the left"
    assert remove_word(p, "red", policy="replace") == "a crimson _ circle, on the left"
    assert remove_word("a red circle left of a red square", "red", occurrence=1) == "a red circle left of a square"
    with pytest.raises(ValueError, match="policy=.mask. is not a removal policy"):
        remove_word(p, "red", policy="mask")
    with pytest.raises(WordNotInPromptError):
        remove_word(p, "blue")
