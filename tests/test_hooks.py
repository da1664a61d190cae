"""The hook layer leaves the pipeline exactly as it found it: after every capture, also one interrupted
by an error, each attention layer has its original processor object, no module keeps a hook, the
scheduler keeps its own ``step``, and the UNet's outputs are bit-identical to before."""
import pytest
import torch

from nbhelpers import hooks
from nbhelpers.attention import AttentionStore, attention_probs_with_grad, capture_cross_attention


def _state(model):
    unet = model.pipe.unet
    return (dict(unet.attn_processors),
            {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for n, m in unet.named_modules()},
            dict(vars(model.pipe.scheduler)).get("step"))


def _outputs(model):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, *model.latent_shape, generator=g)
    with torch.no_grad():
        return model.eps(z, torch.tensor([-1.0, 2.0]), model.condition(["a red circle", "a blue square"]))


class Boom(Exception):
    pass


def _captures(model):
    unet = model.pipe.unet
    z = torch.randn(2, *model.latent_shape)
    a = torch.tensor([0.0, 1.0])
    cond = model.condition(["a red circle", "a blue square"])

    def cross_attention():
        with capture_cross_attention(unet, AttentionStore(model.latent_shape[-2:]), count_calls=True):
            model.eps(z, a, cond)
            raise Boom

    def probs_with_grad():
        with attention_probs_with_grad(unet) as rec:
            model.eps(z, a, cond)
            assert rec and all(len(v) == 1 for v in rec.values())
            raise Boom

    def trajectory():
        from nbhelpers.model import _TrajectoryRecorder

        with _TrajectoryRecorder(model):
            model.eps(z, a, cond)
            raise Boom

    def module_hook():
        with hooks.module_hooks(unet.conv_in, forward=lambda m, i, o: None, forward_pre=lambda m, i: None):
            model.eps(z, a, cond)
            raise Boom

    return {"cross_attention": cross_attention, "probs_with_grad": probs_with_grad, "trajectory": trajectory,
            "module_hook": module_hook}


@pytest.mark.parametrize("capture", ["cross_attention", "probs_with_grad", "trajectory", "module_hook"])
def test_every_capture_restores_the_pipeline_after_an_error(tiny_model, capture):
    before, out_before = _state(tiny_model), _outputs(tiny_model)
    with pytest.raises(Boom):
        _captures(tiny_model)[capture]()
    after = _state(tiny_model)
    assert after[0].keys() == before[0].keys() and all(after[0][k] is before[0][k] for k in before[0])
    assert after[1] == before[1] and after[2] is None
    assert torch.equal(_outputs(tiny_model), out_before)


def test_recorded_attention_computes_what_the_original_processor_does(tiny_model):
    """The recording processor (plain attention, in the autograd graph) gives the outputs of the
    default processor (SDPA) up to float rounding, and its probabilities are distributions over tokens."""
    z = torch.randn(2, *tiny_model.latent_shape, generator=torch.Generator().manual_seed(1))
    a, cond = torch.tensor([0.0, 1.0]), tiny_model.condition(["a red circle", "a blue square"])
    plain = tiny_model.eps(z, a, cond)
    with attention_probs_with_grad(tiny_model.pipe.unet) as rec:
        recorded = tiny_model.eps(z, a, cond)
    torch.testing.assert_close(recorded, plain, rtol=1e-4, atol=1e-5)
    for probs in rec.values():
        torch.testing.assert_close(probs[0].sum(-1), torch.ones(probs[0].shape[:-1]))


def test_cross_attention_layers_names_and_errors(tiny_model):
    names = hooks.cross_attention_layers(tiny_model.pipe.unet)
    assert names and all(".attn2." in n for n in names)
    with pytest.raises(ValueError, match="no cross-attention layer matches"):
        hooks.cross_attention_layers(tiny_model.pipe.unet, "no_such_block")
