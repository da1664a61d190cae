"""Bad input gets a clear nbhelpers error that names the value (or a documented, tested conversion), never a
deep library error and never a number returned silently. One case per row; the model is the tiny random
pipeline (the checks run before any real work, so each case takes milliseconds)."""
import math
import warnings

import numpy as np
import pytest
import torch

import nbhelpers as nbh
from nbhelpers import bias, conceptor, info, pid, saliency, timesteps
from nbhelpers.attention import word_attention_maps
from nbhelpers.errors import NbhelpersError
from nbhelpers.text import RepeatedWordWarning, UnknownWordWarning

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def img(tiny_model):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (tiny_model.image_size, tiny_model.image_size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tr(tiny_model):
    return timesteps.trace(tiny_model, PROMPT, steps=4)


def _reader(image):
    return {"colour": "red"}


DIMS = {"colour": ("red", "blue")}

# (id, call(model, image, trace, tmp_path), expected error class, fragments the message must contain)
CASES = [
    # -- generation ----------------------------------------------------------------------------------------
    ("steps=0", lambda m, x, t, p: m.generate(PROMPT, steps=0), nbh.NbhelpersError, ["steps=0"]),
    ("steps=-2", lambda m, x, t, p: m.generate(PROMPT, steps=-2), nbh.NbhelpersError, ["steps=-2"]),
    ("steps=2.5", lambda m, x, t, p: m.generate(PROMPT, steps=2.5), nbh.NbhelpersError, ["steps=2.5"]),
    ("steps='10'", lambda m, x, t, p: m.generate(PROMPT, steps="10"), nbh.NbhelpersError, ["steps='10'"]),
    ("steps=10**6", lambda m, x, t, p: m.generate(PROMPT, steps=10**6), nbh.NbhelpersError, ["steps=1000000"]),
    ("guidance=nan", lambda m, x, t, p: m.generate(PROMPT, guidance=float("nan")), nbh.NbhelpersError,
     ["guidance=nan"]),
    ("guidance=inf", lambda m, x, t, p: m.generate(PROMPT, guidance=math.inf), nbh.NbhelpersError, ["guidance=inf"]),
    ("guidance=-1", lambda m, x, t, p: m.generate(PROMPT, guidance=-1), nbh.NbhelpersError, ["guidance=-1"]),
    ("guidance=0.5", lambda m, x, t, p: m.generate(PROMPT, guidance=0.5), nbh.NbhelpersError, ["guidance=0.5"]),
    ("guidance='3'", lambda m, x, t, p: m.generate(PROMPT, guidance="3"), nbh.NbhelpersError, ["guidance='3'"]),
    ("seed=1.7", lambda m, x, t, p: m.generate(PROMPT, seed=1.7), nbh.NbhelpersError, ["seed=1.7"]),
    ("seed='abc'", lambda m, x, t, p: m.generate(PROMPT, seed="abc"), nbh.NbhelpersError, ["seed='abc'"]),
    ("seed=None", lambda m, x, t, p: m.generate(PROMPT, seed=None), nbh.NbhelpersError, ["seed=None"]),
    ("seed=2**70", lambda m, x, t, p: m.generate(PROMPT, seed=2**70), nbh.NbhelpersError, [str(2**70)]),
    ("seed=-1", lambda m, x, t, p: m.generate(PROMPT, seed=-1), nbh.NbhelpersError, ["seed=-1"]),
    ("seed=True", lambda m, x, t, p: m.generate(PROMPT, seed=True), nbh.NbhelpersError, ["seed=True"]),
    ("seed list with a string", lambda m, x, t, p: m.generate([PROMPT, PROMPT], seed=[1, "x"]), nbh.NbhelpersError,
     ["seed[1]='x'"]),
    ("seed=[]", lambda m, x, t, p: m.generate(PROMPT, seed=[]), nbh.NbhelpersError, ["seed=[]"]),
    ("prompt=123", lambda m, x, t, p: m.generate(123), nbh.PromptError, ["123"]),
    ("prompt=''", lambda m, x, t, p: m.generate(""), nbh.EmptyPromptError, ["prompt=None"]),
    ("prompt=[]", lambda m, x, t, p: m.generate([]), nbh.EmptyPromptError, ["prompt=[]"]),
    ("prompt list with None", lambda m, x, t, p: m.generate([PROMPT, None]), nbh.PromptError, ["None"]),
    ("prompt too long", lambda m, x, t, p: m.generate("red " * 40), nbh.PromptTooLongError, ["tokens"]),
    ("latents of the wrong shape", lambda m, x, t, p: m.generate(PROMPT, latents=torch.zeros(1, 3, 8, 8)),
     nbh.ImageFormatError, ["(1, 3, 8, 8)"]),
    ("3 seeds for 2 prompts", lambda m, x, t, p: m.generate([PROMPT, PROMPT], seed=[1, 2, 3]), nbh.NbhelpersError,
     ["3 seeds for 2 prompts"]),
    # -- information ---------------------------------------------------------------------------------------
    ("n=0", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=0), nbh.NbhelpersError, ["n=0"]),
    ("n=-3", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=-3), nbh.NbhelpersError, ["n=-3"]),
    ("n=2.5", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=2.5), nbh.NbhelpersError, ["n=2.5"]),
    ("n=1", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=1), nbh.NbhelpersError, ["n=1"]),
    ("n=2 (no error estimate)", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=2), nbh.NbhelpersError,
     ["n=2", "n >= 4"]),
    ("n='many'", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n="many"), nbh.NbhelpersError,
     ["n='many'"]),
    ("n='auto' without target", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n="auto"),
     nbh.NbhelpersError, ["target_stderr"]),
    ("target_stderr=-1", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n="auto", target_stderr=-1),
     nbh.NbhelpersError, ["target_stderr=-1"]),
    ("target_stderr without auto", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=8, target_stderr=0.5),
     nbh.NbhelpersError, ["target_stderr=0.5"]),
    ("form='bogus'", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=8, form="bogus"), nbh.NbhelpersError,
     ["form='bogus'"]),
    ("info seed=1.5", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=8, seed=1.5), nbh.NbhelpersError,
     ["seed=1.5"]),
    ("batch_size=0", lambda m, x, t, p: info.mutual_information(m, x, PROMPT, n=8, batch_size=0), nbh.NbhelpersError,
     ["batch_size=0"]),
    ("word not in the prompt", lambda m, x, t, p: info.conditional_mutual_information(m, x, PROMPT, "blue", n=8),
     nbh.WordNotInPromptError, ["'blue'", "red"]),
    ("word=''", lambda m, x, t, p: info.conditional_mutual_information(m, x, PROMPT, "", n=8), nbh.PromptError,
     ["word=''"]),
    ("words=[3]", lambda m, x, t, p: info.prompt_information(m, x, PROMPT, words=[3], n=8), nbh.PromptError,
     ["words[0]", "int"]),
    ("occurrence out of range",
     lambda m, x, t, p: info.conditional_mutual_information(m, x, PROMPT, "red", n=8, occurrence=3),
     nbh.WordNotInPromptError, ["occurrence"]),
    ("policy='bogus'", lambda m, x, t, p: info.conditional_mutual_information(m, x, PROMPT, "red", n=8,
                                                                               policy="bogus"),
     nbh.NbhelpersError, ["policy='bogus'"]),
    ("prompt=None in MI", lambda m, x, t, p: info.mutual_information(m, x, None, n=8), nbh.NbhelpersError, ["None"]),
    ("captions=[]", lambda m, x, t, p: info.caption_scores(m, x, [], n=8), nbh.NbhelpersError, ["captions=[]"]),
    ("captions as one string", lambda m, x, t, p: info.caption_scores(m, x, "a red circle", n=8), nbh.PromptError,
     ["one string"]),
    # -- images --------------------------------------------------------------------------------------------
    ("float tensor in 0..255", lambda m, x, t, p: info.mutual_information(
        m, torch.from_numpy(x).permute(2, 0, 1).float(), PROMPT, n=8), nbh.ImageFormatError, ["[-1, 1]", "127.5"]),
    ("float array in 0..255", lambda m, x, t, p: info.mutual_information(m, x.astype(np.float32), PROMPT, n=8),
     nbh.ImageFormatError, ["0..1", "uint8"]),
    ("image of the wrong size", lambda m, x, t, p: info.mutual_information(m, x[:16, :16], PROMPT, n=8),
     nbh.ImageFormatError, ["16x16"]),
    ("empty image list", lambda m, x, t, p: info.mutual_information(m, [], PROMPT, n=8), nbh.ImageFormatError,
     ["empty"]),
    ("image with NaN", lambda m, x, t, p: info.mutual_information(
        m, torch.full((1, 3, m.image_size, m.image_size), float("nan")), PROMPT, n=8), nbh.ImageFormatError, ["NaN"]),
    ("grey array", lambda m, x, t, p: info.mutual_information(m, x[..., 0], PROMPT, n=8), nbh.ImageFormatError,
     ["RGB"]),
    ("channels-first array", lambda m, x, t, p: info.mutual_information(m, x.transpose(2, 0, 1)[None], PROMPT, n=8),
     nbh.ImageFormatError, ["transpose"]),
    ("channels-last tensor", lambda m, x, t, p: info.mutual_information(m, torch.from_numpy(x)[None], PROMPT, n=8),
     nbh.ImageFormatError, ["permute"]),
    ("image given as a path", lambda m, x, t, p: info.mutual_information(m, "picture.png", PROMPT, n=8),
     nbh.ImageFormatError, ["str", "Image.open"]),
    ("int64 tensor", lambda m, x, t, p: info.mutual_information(
        m, torch.zeros(1, 3, m.image_size, m.image_size, dtype=torch.int64), PROMPT, n=8), nbh.ImageFormatError,
     ["torch.int64"]),
    # -- PID -----------------------------------------------------------------------------------------------
    ("PID word1 == word2", lambda m, x, t, p: pid.partial_information(m, x, PROMPT, "red", "red", n=8),
     nbh.NbhelpersError, ["word1='red'", "word2='red'"]),
    ("PID word missing", lambda m, x, t, p: pid.partial_information(m, x, PROMPT, "red", "square", n=8),
     nbh.WordNotInPromptError, ["'square'"]),
    ("PID context='bogus'", lambda m, x, t, p: pid.partial_information(m, x, PROMPT, "red", "circle", n=8,
                                                                       context="bogus"),
     nbh.NbhelpersError, ["context='bogus'"]),
    ("PID n=0", lambda m, x, t, p: pid.partial_information(m, x, PROMPT, "red", "circle", n=0), nbh.NbhelpersError,
     ["n=0"]),
    # -- timesteps and saliency ------------------------------------------------------------------------------
    ("trace steps=0", lambda m, x, t, p: timesteps.trace(m, PROMPT, steps=0), nbh.NbhelpersError, ["steps=0"]),
    ("trace word missing", lambda m, x, t, p: timesteps.trace(m, PROMPT, steps=2, words=["blue"]),
     nbh.WordNotInPromptError, ["'blue'"]),
    ("trace guidance=nan", lambda m, x, t, p: timesteps.trace(m, PROMPT, steps=2, guidance=float("nan")),
     nbh.NbhelpersError, ["guidance=nan"]),
    ("DF-RISE n_masks=0", lambda m, x, t, p: saliency.rise_saliency(m, t, 1, n_masks=0), nbh.NbhelpersError,
     ["n_masks=0"]),
    ("DF-RISE p=1.5", lambda m, x, t, p: saliency.rise_saliency(m, t, 1, n_masks=4, p=1.5), nbh.NbhelpersError,
     ["p=1.5"]),
    ("DF-RISE cells=0", lambda m, x, t, p: saliency.rise_saliency(m, t, 1, n_masks=4, cells=0), nbh.NbhelpersError,
     ["cells=0"]),
    ("DF-RISE step outside", lambda m, x, t, p: saliency.rise_saliency(m, t, 99, n_masks=4), nbh.NbhelpersError,
     ["99"]),
    ("DF-CAM unknown block", lambda m, x, t, p: saliency.gradcam_saliency(m, t, 1, block="nope"), nbh.NbhelpersError,
     ["'nope'"]),
    ("faithfulness n_points=1", lambda m, x, t, p: saliency.faithfulness(
        m, t, saliency.rise_saliency(m, t, 1, n_masks=4), n_points=1), nbh.NbhelpersError, ["n_points=1"]),
    ("attention maps n=0", lambda m, x, t, p: word_attention_maps(m, x, PROMPT, n=0), nbh.NbhelpersError, ["n=0"]),
    # -- bias audit ----------------------------------------------------------------------------------------
    ("audit n=0", lambda m, x, t, p: bias.run_audit(m, ["circle"], p / "a", n=0, reader=_reader, dimensions=DIMS),
     nbh.NbhelpersError, ["n=0"]),
    ("audit n=-1", lambda m, x, t, p: bias.run_audit(m, ["circle"], p / "a", n=-1, reader=_reader, dimensions=DIMS),
     nbh.NbhelpersError, ["n=-1"]),
    ("audit subjects=[]", lambda m, x, t, p: bias.run_audit(m, [], p / "a", n=2, reader=_reader, dimensions=DIMS),
     nbh.NbhelpersError, ["subjects=[]"]),
    ("audit subjects as one string", lambda m, x, t, p: bias.run_audit(m, "circle", p / "a", n=2, reader=_reader,
                                                                       dimensions=DIMS),
     nbh.PromptError, ["one string"]),
    ("audit template without {subject}", lambda m, x, t, p: bias.run_audit(
        m, ["circle"], p / "a", templates=["a red thing"], n=2, reader=_reader, dimensions=DIMS), nbh.NbhelpersError,
     ["{subject}"]),
    ("audit without reader", lambda m, x, t, p: bias.run_audit(m, ["circle"], p / "a", n=2, dimensions=DIMS),
     nbh.NbhelpersError, ["reader=None"]),
    ("audit one-group dimension", lambda m, x, t, p: bias.run_audit(m, ["circle"], p / "a", n=2, reader=_reader,
                                                                    dimensions={"colour": ("red",)}),
     nbh.NbhelpersError, ["dimensions="]),
    # -- conceptor -----------------------------------------------------------------------------------------
    ("conceptor seeds=[]", lambda m, x, t, p: conceptor.concept_images(m, "circle", []), nbh.NbhelpersError,
     ["seeds=[]"]),
    ("conceptor k=0", lambda m, x, t, p: conceptor.decompose(m, "circle", k=0), nbh.NbhelpersError, ["k=0"]),
    ("conceptor lr=nan", lambda m, x, t, p: conceptor.decompose(m, "circle", lr=float("nan")), nbh.NbhelpersError,
     ["lr=nan"]),
    ("conceptor unknown setting", lambda m, x, t, p: conceptor.decompose(m, "circle", stepz=3), TypeError,
     ["'stepz'", "steps"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(tiny_model, img, tr, tmp_path, case):
    _, call, error, fragments = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info_:
            call(tiny_model, img, tr, tmp_path)
    assert isinstance(info_.value, NbhelpersError), f"{type(info_.value).__name__} is not an nbhelpers error"
    message = str(info_.value)
    for fragment in fragments:
        assert fragment in message, f"the message does not name {fragment!r}: {message}"
    assert len(message) < 600


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60


# -- loading ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "cuda:banana", "tpu"])
def test_unknown_device_is_named(device):
    with pytest.raises(nbh.DeviceUnavailableError, match=device.split(":")[0]):
        nbh.resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_named():
    with pytest.raises(nbh.DeviceUnavailableError, match="cuda"):
        nbh.load_model("toy", device="cuda")


@pytest.mark.parametrize("dtype", ["float61", "int8", torch.int64, 3])
def test_unknown_dtype_is_named(dtype):
    with pytest.raises(nbh.NbhelpersError, match="dtype="):
        nbh.load_model("toy", device="cpu", dtype=dtype)


@pytest.mark.parametrize("name", ["no-such-org/no-such-model", "/no/such/folder", "./relative/missing", 123])
def test_missing_model_is_named(name):
    with pytest.raises(nbh.ModelNotFoundError, match=str(name).strip("./")[:8]):
        nbh.load_model(name, device="cpu")


def test_dtype_names_accepted():
    from nbhelpers.model import resolve_dtype

    assert resolve_dtype("fp16") is torch.float16 and resolve_dtype("torch.bfloat16") is torch.bfloat16
    assert resolve_dtype(None) is None and resolve_dtype(torch.float32) is torch.float32


# -- documented conversions: equal to the canonical form, never misread -------------------------------------------
def test_uint8_tensor_is_converted_like_a_uint8_array(tiny_model, img):
    as_array = tiny_model.latent_of(img)
    as_tensor = tiny_model.latent_of(torch.from_numpy(img).permute(2, 0, 1).contiguous())
    torch.testing.assert_close(as_tensor, as_array)
    as_float = tiny_model.latent_of(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
    torch.testing.assert_close(as_float, as_array)


def test_integral_seed_forms_are_the_same_seed(tiny_model):
    a = tiny_model.generate(PROMPT, seed=3, steps=2)
    b = tiny_model.generate(PROMPT, seed=np.int64(3), steps=2)
    c = tiny_model.generate(PROMPT, seed=3.0, steps=2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.images, c.images)
    assert a.seeds == b.seeds == c.seeds == [3]


def test_one_word_string_is_a_list_of_one(tiny_model, img):
    r = info.prompt_information(tiny_model, img, PROMPT, words="red", n=4, include_prompt=False)
    assert list(r.words) == ["red"]


# -- words ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("word", ["rouge", "猫"])
def test_unknown_word_warns_with_its_tokens(tiny_model, word):
    with pytest.warns(UnknownWordWarning, match=f"'{word}'.*tokens"):
        tiny_model.tokenize(f"a {word} circle")


def test_emoji_outside_words_warns(tiny_model):
    with pytest.warns(UnknownWordWarning, match="outside words"):
        tiny_model.tokenize("a \U0001F600 circle")


def test_known_words_do_not_warn(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownWordWarning)
        tiny_model.tokenize("a crimson triangle left of a red circle")


def test_repeated_word_policy_is_shown_and_switchable(tiny_model, img):
    prompt = "a red circle left of a red square"
    with pytest.warns(RepeatedWordWarning, match="occurs 2 times"):
        every = info.conditional_mutual_information(tiny_model, img, prompt, "red", n=4)
    assert every.params["occurrences"] == 2 and every.params["removed"] == "all"
    assert every.params["reduced_prompt"] == "a circle left of a square"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepeatedWordWarning)
        second = info.conditional_mutual_information(tiny_model, img, prompt, "red", n=4, occurrence=1)
    assert second.params["removed"] == 1 and second.params["reduced_prompt"] == "a red circle left of a square"
    assert second.value != every.value


def test_repeated_word_in_pid_is_shown(tiny_model, img):
    prompt = "a red circle left of a red square"
    with pytest.warns(RepeatedWordWarning, match="'red' occurs 2 times"):
        r = pid.partial_information(tiny_model, img, prompt, "red", "square", n=4)
    assert r.params["occurrences"] == {"red": 2, "square": 1}
    assert r.prompts["c+y2"] == "a circle left of a square"  # the rest without every 'red'


def test_validation_runs_before_the_cache(tiny_model, img, tmp_path):
    from nbhelpers import cache

    cache.configure(enabled=True, directory=tmp_path / "cache")
    try:
        with pytest.raises(nbh.NbhelpersError, match="n=0"):
            info.mutual_information(tiny_model, img, PROMPT, n=0)
        assert cache.info()["entries"] == 0
        a = info.mutual_information(tiny_model, img, PROMPT, n=4, seed=3)
        b = info.mutual_information(tiny_model, img, PROMPT, n=4, seed=np.int64(3))  # the same call: a hit
        assert cache.info()["entries"] == 1 and a.value == b.value
    finally:
        cache.configure()
