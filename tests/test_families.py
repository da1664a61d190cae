"""Every architecture family against its own pipeline (issue 16): one denoising step taken with our ε
equals the pipeline's scheduler step, our noising equals the scheduler's, the rectified-flow conversion
gives a Gaussian's exact MI, and a missing zoo model gives the clear error. The pipelines are tiny,
randomly initialised, real diffusers classes (nbhelpers.toyworld.tiny), built offline on the CPU."""
import math

import numpy as np
import pytest
import torch

from nbhelpers.closed_form import GaussianDenoiser
from nbhelpers.errors import ModelNotFoundError
from nbhelpers.families import Condition, FlowMatching
from nbhelpers.immse import LogSNRSampler, information_terms
from nbhelpers.model import ALIASES, DiffusionModel, load_model
from nbhelpers.toyworld.tiny import TINY_FAMILIES, tiny_family_pipeline

CASES = TINY_FAMILIES + ("sd-v",)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            pipe = tiny_family_pipeline("sd", prediction_type="v_prediction") if name == "sd-v" else tiny_family_pipeline(name)
            cache[name] = DiffusionModel(pipe, name=name, image_size=32)
        return cache[name]
    return get


def _scheduler(m):
    """A fresh copy of the pipeline's scheduler (PixArt's multistep DPM-Solver swapped for DDIM, whose one
    step is defined without history), set to 10 steps."""
    import diffusers

    sched = m.pipe.scheduler
    cls = diffusers.DDIMScheduler if m.family.name == "pixart" else type(sched)
    sched = cls.from_config(sched.config, **({"clip_sample": False} if cls is diffusers.DDIMScheduler else {}))
    sched.set_timesteps(10, **({"mu": 0.8} if sched.config.get("use_dynamic_shifting") else {}))
    return sched


def _pipeline_output(m, latents, t, cond):
    """The denoiser's output exactly as each pipeline's __call__ computes it (written out per pipeline,
    independently of the family code)."""
    p, b = m.pipe, latents.shape[0]
    tt = t.expand(b)
    name = m.family.name
    if name == "sd":
        return p.unet(latents, tt, encoder_hidden_states=cond).sample
    if name == "sdxl":
        return p.unet(latents, tt, encoder_hidden_states=cond.prompt_embeds,
                      added_cond_kwargs={"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}).sample
    if name == "sd3":
        return p.transformer(hidden_states=latents, timestep=tt, encoder_hidden_states=cond.prompt_embeds,
                             pooled_projections=cond.pooled_projections).sample
    if name == "pixart":
        out = p.transformer(latents, encoder_hidden_states=cond.prompt_embeds,
                            encoder_attention_mask=cond.prompt_attention_mask, timestep=tt,
                            added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        return out.chunk(2, dim=1)[0]
    if name == "flux":
        c, h, w = m.latent_shape
        packed = p._pack_latents(latents, b, c, h, w)
        guidance = torch.full([b], 1.0) if p.transformer.config.guidance_embeds else None
        out = p.transformer(hidden_states=packed, timestep=tt / 1000, guidance=guidance,
                            pooled_projections=cond.pooled_projections, encoder_hidden_states=cond.prompt_embeds,
                            txt_ids=torch.zeros(cond.prompt_embeds.shape[1], 3),
                            img_ids=p._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)).sample
        return p._unpack_latents(out, m.image_size, m.image_size, m.vae_scale)
    raise AssertionError(name)


def _next_logsnr(m, sched, i):
    """log-SNR the scheduler steps to from step i."""
    if m.family.noise.kind == "flow":
        return float(FlowMatching.logsnr_of_t(sched.sigmas[i + 1].double()))
    if hasattr(sched, "sigmas") and type(sched).__name__.startswith("Euler"):
        return float(-2 * torch.log(sched.sigmas[i + 1].double()))
    t = int(sched.timesteps[i]) - sched.config.num_train_timesteps // sched.num_inference_steps
    acp = sched.alphas_cumprod[t] if t >= 0 else sched.final_alpha_cumprod
    return float(torch.log(acp.double() / (1 - acp.double())))


def _to_scheduler_space(m, sched, z_vp, a):
    """VP latents at log-SNR a in the scheduler's own coordinates (Euler: x + σε; flow: (1−t)x + tε)."""
    if m.family.noise.kind == "flow":
        return m.network_latents(z_vp, a)
    if type(sched).__name__.startswith("Euler"):
        return z_vp * math.sqrt(1 + math.exp(-a))
    return z_vp


@pytest.mark.parametrize("name", CASES)
def test_one_step_with_our_eps_equals_the_pipelines_scheduler_step(models, name):
    m = models(name)
    sched = _scheduler(m)
    i = 3
    t = sched.timesteps[i]
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(1, *m.latent_shape, generator=g), torch.randn(1, *m.latent_shape, generator=g)
    a = float(m.logsnr_of(t))
    z_vp = torch.sigmoid(torch.tensor(a)).sqrt() * x + torch.sigmoid(torch.tensor(-a)).sqrt() * noise
    latents = _to_scheduler_space(m, sched, z_vp, a)  # the pipeline's latents at step i
    cond = m.condition("a red circle")
    with torch.no_grad():
        net_in = sched.scale_model_input(latents, t) if hasattr(sched, "scale_model_input") else latents
        ref = sched.step(_pipeline_output(m, net_in, t, cond), t, latents).prev_sample
    eps = m.eps(z_vp, a, cond)
    x0 = m.pred_x0(z_vp, a, eps)
    a2 = _next_logsnr(m, sched, i)
    z_next = torch.sigmoid(torch.tensor(a2)).sqrt() * x0 + torch.sigmoid(torch.tensor(-a2)).sqrt() * eps
    ours = _to_scheduler_space(m, sched, z_next, a2)
    assert (ours - ref).abs().max() < 1e-5 * max(1.0, float(ref.abs().max())), float((ours - ref).abs().max())


@pytest.mark.parametrize("name", CASES)
def test_our_noising_equals_the_schedulers(models, name):
    m = models(name)
    sched = _scheduler(m)
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(2, *m.latent_shape, generator=g), torch.randn(2, *m.latent_shape, generator=g)
    for t in sched.timesteps[[1, 5, 8]]:
        a = float(m.logsnr_of(t))
        z_vp = torch.sigmoid(torch.tensor(a)).sqrt() * x + torch.sigmoid(torch.tensor(-a)).sqrt() * noise
        if m.family.noise.kind == "flow":
            theirs, ours = sched.scale_noise(x, t.expand(2), noise), m.network_latents(z_vp, a)
        elif type(sched).__name__.startswith("Euler"):
            theirs = sched.add_noise(x, noise, t.expand(2)) / torch.sqrt(1 + torch.exp(torch.tensor(-a)))
            ours = z_vp
        else:
            theirs, ours = sched.add_noise(x, noise, t.expand(2).long()), m.network_latents(z_vp, a)
        assert torch.allclose(ours, theirs.float(), atol=1e-5), (name, float(t), float((ours - theirs).abs().max()))


class GaussianFlow:
    """A Gaussian x (prior N(0, Σ); given y, N(K y, Σ_post)) seen by a rectified-flow network: the exact
    velocity E[ε − x | z_t] for z_t = (1−t)x + tε, derived in flow coordinates (not from an ε)."""

    def __init__(self, g: GaussianDenoiser):
        self.g, self.latent_shape, self.noise = g, g.latent_shape, FlowMatching()

    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, d = z_t.shape[0], self.g.d
        zt, t = z_t.reshape(b, d).double(), t.reshape(-1, 1).double()
        observed = cond[:, 0] > 0.5
        v = torch.empty_like(zt)
        for flag in (False, True):
            rows = observed == flag
            if not rows.any():
                continue
            S = self.g.S_post if flag else self.g.S
            m = cond[rows, 1:].double() @ self.g.gain.T if flag else torch.zeros(int(rows.sum()), d, dtype=torch.float64)
            tr = t[rows]
            r = zt[rows] - (1 - tr) * m
            x_hat = torch.stack([m[j] + (1 - tr[j]) * S @ torch.linalg.solve((1 - tr[j]) ** 2 * S + tr[j] ** 2 * torch.eye(d, dtype=torch.float64), r[j])
                                 for j in range(len(r))])
            eps_hat = (zt[rows] - (1 - tr) * x_hat) / tr
            v[rows] = eps_hat - x_hat
        return v.float().view_as(z_t)

    def eps(self, z, logsnr, cond):  # the Denoiser protocol, through the family code's conversion
        a = torch.as_tensor(logsnr, dtype=torch.float64).reshape(-1).expand(z.shape[0])
        cond = self.g.unconditional(z.shape[0]) if cond is None else cond
        z_net = z * self.noise.scale(a).view(-1, 1, 1, 1).float()
        return self.noise.to_eps(self.velocity(z_net, self.noise.t_of(a), cond), z_net, a)


def test_flow_matching_conversion_gives_the_gaussian_mi():
    g = GaussianDenoiser.example()
    flow = GaussianFlow(g)
    x, c = g.sample(1500, torch.Generator().manual_seed(5))
    sampler = LogSNRSampler(1.0, 2.0, 3.0)
    r = information_terms(flow, x, {"null": g.unconditional(), "y": c}, {"mi": ("null", "y")}, n=1, antithetic=False,
                          sampler=sampler, batch_size=1500, keep_map=False, seed=2)["mi"]
    exact = g.truncated_mi(*sampler.range)
    assert abs(r.value - exact) < 2 * r.stderr, (r.value, r.stderr, exact)
    # and the conversion is not vacuous: reading the velocity as if it were ε is far off
    wrong = information_terms(type("W", (), {"latent_shape": flow.latent_shape,
                                             "eps": lambda s, z, a, cc: flow.velocity(z, flow.noise.t_of(torch.as_tensor(a, dtype=torch.float64).reshape(-1).expand(z.shape[0])), g.unconditional(z.shape[0]) if cc is None else cc)})(),
                              x, {"null": g.unconditional(), "y": c}, {"mi": ("null", "y")}, n=1, antithetic=False,
                              sampler=sampler, batch_size=1500, keep_map=False, seed=2)["mi"]
    assert abs(wrong.value - exact) > 10 * r.stderr


def test_flow_time_and_logsnr_are_inverse():
    a = torch.linspace(-12, 12, 49, dtype=torch.float64)
    n = FlowMatching()
    assert torch.allclose(n.logsnr_of_t(n.t_of(a)), a, atol=1e-9)
    t = n.t_of(a)
    s = n.scale(a)  # (1−t)/s and t/s are the VP coefficients
    assert torch.allclose(((1 - t) / s) ** 2, torch.sigmoid(a)) and torch.allclose((t / s) ** 2, torch.sigmoid(-a))


def test_condition_behaves_like_a_batch_tensor():
    c = Condition("prompt_embeds", prompt_embeds=torch.randn(1, 5, 8), pooled=torch.randn(1, 4),
                  mask=torch.ones(1, 5, dtype=torch.long))
    e = c.expand(3, 5, 8)
    assert e.shape == (3, 5, 8) and e.pooled.shape == (3, 4)
    both = torch.cat([c, e])
    assert both.shape[0] == 4 and both.mask.dtype == torch.long
    assert both[torch.tensor([0, 2])].shape[0] == 2 and both[1:3].pooled.shape == (2, 4)
    assert both.to(dtype=torch.float16).mask.dtype == torch.long and both.to(dtype=torch.float16).pooled.dtype == torch.float16


ZOO = ("sdxl", "sd3-medium", "sd35-medium", "flux-schnell", "flux-dev", "pixart-sigma")


@pytest.mark.parametrize("entry", ZOO)
def test_a_zoo_model_missing_from_the_cache_gives_the_download_command(entry, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=f"hf download {ALIASES[entry]}"):
        load_model(entry)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_every_family_loads_from_a_saved_folder(models, name, tmp_path):
    """save_pretrained → load_model (folder checked, pipeline class read from model_index.json): the same
    predictions as the pipeline that was saved."""
    m = models(name)
    m.pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_model(tmp_path, image_size=32)
    assert loaded.family.name == m.family.name and loaded.latent_shape == m.latent_shape
    z = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(loaded.eps(z, 1.0, loaded.condition(["a red circle", ""])),
                          m.eps(z, 1.0, m.condition(["a red circle", ""])), atol=1e-6)


def test_an_unsupported_pipeline_class_is_named(tmp_path):
    import json

    from nbhelpers.errors import UnsupportedModelError

    save = tiny_family_pipeline("sd")
    save.save_pretrained(tmp_path, safe_serialization=True)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="KandinskyPipeline.*StableDiffusionXLPipeline"):
        load_model(tmp_path)
