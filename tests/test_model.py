"""The DiffusionModel adapter, on tiny randomly initialised SD-layout pipelines loaded from folders."""
import numpy as np
import pytest
import torch
from PIL import Image

import nbhelpers
from nbhelpers import (DeviceUnavailableError, EmptyPromptError, ImageFormatError, ModelNotFoundError,
                       PromptTooLongError, WordNotInPromptError, load_model)


def test_loads_from_a_folder_with_from_pretrained(tiny_model):
    assert isinstance(tiny_model, nbhelpers.Denoiser)
    assert tiny_model.latent_shape == (4, 16, 16) and tiny_model.image_size == 32
    lo, hi = tiny_model.logsnr_range
    assert lo == pytest.approx(-5.36, abs=0.05) and hi == pytest.approx(7.07, abs=0.05)  # SD's schedule


def test_timestep_interpolation_inverts_the_schedule(tiny_model):
    table = tiny_model.family.noise.table
    for t in [0, 1, 17, 500, 998, 999]:
        assert float(tiny_model.timestep_of(table[t])) == pytest.approx(t, abs=1e-6)
    a = torch.linspace(-5.0, 7.0, 101)
    back = tiny_model.logsnr_of(tiny_model.timestep_of(a))
    assert torch.allclose(back, a.double(), atol=1e-6)
    t = tiny_model.timestep_of(torch.tensor([0.0, 1.0]))
    assert (t > 0).all() and (t < 999).all() and t[0] > t[1] and float(t[0] % 1) != 0.0  # fractional


def test_eps_broadcasts_and_batches_consistently(tiny_model):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, 16, 16, generator=g)
    cond = tiny_model.condition(["a red circle"])
    e1 = tiny_model.eps(z, 0.5, cond)
    e2 = tiny_model.eps(z, torch.full((6,), 0.5), cond.expand(6, -1, -1), max_batch=4)
    assert e1.shape == z.shape and e1.dtype == torch.float32
    assert torch.allclose(e1, e2, atol=1e-5)
    assert not torch.allclose(e1, tiny_model.eps(z, 0.5, None), atol=1e-4), "the condition must matter"
    with pytest.raises(ValueError, match="batch"):
        tiny_model.eps(z, 0.5, tiny_model.condition(["a", "b"]))
    with pytest.raises(ImageFormatError):
        tiny_model.eps(torch.randn(2, 4, 8, 8), 0.0)


def test_eps_at_a_trained_timestep_equals_the_unet_call(tiny_model):
    t = 421
    a = tiny_model.family.noise.table[t]
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = tiny_model.condition("a blue square")
    direct = tiny_model.pipe.unet(z, torch.tensor([t, t]), encoder_hidden_states=cond.expand(2, -1, -1)).sample
    assert torch.allclose(tiny_model.eps(z, a, cond), direct, atol=1e-5)


def test_v_prediction_converted_like_the_scheduler(tiny_v_model):
    """eps from a v-prediction UNet must equal the noise implied by the scheduler's own x0 estimate."""
    m = tiny_v_model
    assert m.prediction_type == "v_prediction"
    sched = m.pipe.scheduler
    sched.set_timesteps(50)
    t = int(sched.timesteps[10])
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    cond = m.condition("a green triangle").expand(2, -1, -1)
    v = m.pipe.unet(z, torch.tensor([t, t]), encoder_hidden_states=cond).sample
    x0 = sched.step(v, t, z, return_dict=True).pred_original_sample
    ab = sched.alphas_cumprod[t]
    eps_sched = (z - ab.sqrt() * x0) / (1 - ab).sqrt()
    eps = m.eps(z, m.family.noise.table[t], cond)
    assert torch.allclose(eps, eps_sched, atol=1e-4)
    # and the scheduler's velocity of (x0, eps) is what the conversion inverts
    x0_true, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    tt = torch.tensor([t, t])
    zt = sched.add_noise(x0_true, noise, tt)
    vel = sched.get_velocity(x0_true, noise, tt)
    assert torch.allclose(ab.sqrt() * vel + (1 - ab).sqrt() * zt, noise, atol=1e-5)


def test_generate_is_deterministic_and_records_the_trajectory(tiny_model):
    g1 = tiny_model.generate("a red circle", seed=3, steps=5, trajectory=True)
    g2 = tiny_model.generate("a red circle", seed=3, steps=5)
    assert g1.images.shape == (1, 32, 32, 3) and g1.images.dtype == np.uint8
    assert np.array_equal(g1.images, g2.images)
    assert len(g1.trajectory) == 5
    steps = g1.trajectory
    assert [s.index for s in steps] == list(range(5))
    assert steps[0].logsnr < steps[-1].logsnr  # noise decreases
    assert torch.allclose(steps[0].latent, tiny_model.initial_noise([3]), atol=1e-6)
    # the predicted clean latent is consistent with the recorded latent and noise estimate
    s = steps[2]
    a = torch.sigmoid(torch.tensor(s.logsnr))
    assert torch.allclose(a.sqrt() * s.pred_x0 + (1 - a).sqrt() * s.eps, s.latent, atol=1e-4)
    assert g1.decode_step(4).shape == (1, 32, 32, 3)
    # the scheduler's step is restored afterwards
    assert "step" not in vars(tiny_model.pipe.scheduler)
    many = tiny_model.generate(["a red circle", "a blue square"], seed=[3, 4], steps=3)
    assert np.array_equal(many.images[0], tiny_model.generate("a red circle", seed=3, steps=3).images[0])


def test_scheduler_is_restored_after_an_error(tiny_model):
    def boom(*a, **k):
        raise RuntimeError("boom")

    rec = nbhelpers.model._TrajectoryRecorder(tiny_model)
    with pytest.raises(RuntimeError):
        with rec:
            raise RuntimeError("inside")
    assert "step" not in vars(tiny_model.pipe.scheduler)


def test_encode_decode_shapes_and_image_errors(tiny_model):
    img = np.zeros((32, 32, 3), np.uint8)
    z = tiny_model.encode_image(img)
    assert z.shape == (1, 4, 16, 16)
    assert tiny_model.decode(z).shape == (1, 32, 32, 3)
    assert tiny_model.encode_image([Image.fromarray(img)] * 2).shape == (2, 4, 16, 16)
    with pytest.raises(ImageFormatError, match="64x64 pixels but this model works at 32x32"):
        tiny_model.encode_image(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ImageFormatError, match="convert\\('RGB'\\)"):
        tiny_model.encode_image(Image.new("RGBA", (32, 32)))
    with pytest.raises(ImageFormatError, match="RGB array"):
        tiny_model.encode_image(np.zeros((32, 32), np.uint8))
    with pytest.raises(ImageFormatError, match="uint8"):
        tiny_model.encode_image(np.full((32, 32, 3), 7.0))


def test_prompt_errors(tiny_model):
    with pytest.raises(PromptTooLongError, match="at most 24"):
        tiny_model.encode_text("a " * 40)
    with pytest.raises(EmptyPromptError, match="prompt=None"):
        tiny_model.generate("   ", steps=2)
    with pytest.raises(WordNotInPromptError, match="'dog' is not a word"):
        tiny_model.tokenize("a red circle").find("dog")
    with pytest.raises(nbhelpers.PromptError, match="must be a string"):
        tiny_model.generate(12, steps=2)
    assert tiny_model.generate(None, steps=2).images.shape == (1, 32, 32, 3)


def test_model_name_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        load_model(str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        load_model(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE=1.*hf download"):
        load_model("nobody/no-such-model", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available.*device='cpu'"):
        load_model("toy", device="cuda")


def test_fp16_nan_is_reported(tiny_model, monkeypatch):
    orig = tiny_model.pipe.unet.forward

    def nan_forward(*a, **k):
        out = orig(*a, **k)
        out.sample[:] = float("nan")
        return out

    monkeypatch.setattr(tiny_model.pipe.unet, "forward", nan_forward)
    with pytest.raises(nbhelpers.NonFiniteError, match="dtype=torch.float32"):
        tiny_model.eps(torch.zeros(1, 4, 16, 16), 0.0)
