"""The selective state-space backbone (issue 13 #3): shapes, identity at initialisation, the
selective scan against a plain reference, the one backbone registry, and a tiny ssm model
through training, save, load and generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import BACKBONE_NAMES, Condition, PerturbModel, train_model
from engine.config import BACKBONE_DEFAULTS, ModelConfig
from engine.nn.specs import BACKBONE_SPECS
from engine.nn.ssm import SSMBackbone, SSMBlock, selective_scan, ssd

from .conftest import TINY

torch.set_num_threads(1)


def test_ssm_is_registered_everywhere():
    from engine import cli
    from engine.nn.blocks import BACKBONES

    assert "ssm" in BACKBONE_NAMES and BACKBONES["ssm"] is SSMBackbone
    assert "ssm" in cli.BACKBONE.names()
    assert cli.BACKBONE("ssm") == "ssm"
    assert BACKBONE_DEFAULTS["ssm"] == BACKBONE_SPECS["ssm"].defaults()
    mc = ModelConfig.from_overrides("ssm", width=32, d_state=4)
    assert mc.arch.backbone_kw == {"width": 32, "depth": 3, "tokens": 8, "d_state": 4,
                                   "d_conv": 4, "expand": 2, "heads": 4}
    with pytest.raises(TypeError, match=r"the ssm backbone has no option 'dropout'"):
        ModelConfig.from_overrides("ssm", dropout=0.1)
    with pytest.raises(ValueError, match=r"the ssm backbone: expand x width \(2 x 64 = 128\) "
                       r"must be a multiple of heads 3"):
        ModelConfig.from_overrides("ssm", heads=3)
    with pytest.raises(ValueError, match=r"the transformer backbone: width 10 must be a multiple"):
        ModelConfig.from_overrides("transformer", width=10, heads=3)


def test_config_module_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys, engine.config, engine.nn.specs; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-1000:]


@pytest.mark.parametrize("kw", [{}, {"width": 12, "depth": 2, "tokens": 3, "d_state": 5,
                                     "d_conv": 2, "expand": 3, "heads": 9},
                                {"width": 5, "depth": 1, "tokens": 1, "d_state": 1, "d_conv": 1,
                                 "expand": 1, "heads": 1}])
def test_shapes(kw):
    torch.manual_seed(0)
    net = SSMBackbone(9, 16, **kw)
    x, cond = torch.randn(5, 9), torch.randn(5, 16)
    assert net(x, cond).shape == (5, 9)
    k, w = net.tokens, net.width
    h = torch.randn(5, k, w)
    for block in net.blocks:
        assert block(h, cond).shape == (5, k, w)


def test_blocks_are_the_identity_and_the_output_ignores_its_input_at_start():
    torch.manual_seed(0)
    net = SSMBackbone(9, 16, depth=3)
    h, cond = torch.randn(4, net.tokens, net.width), torch.randn(4, 16)
    for block in net.blocks:
        assert torch.equal(block(h, cond), h)                # zero gate: exactly the input
    out = net(torch.randn(4, 9), torch.randn(4, 16))
    # the final layer's output is zero, so the backbone returns only its last bias
    assert torch.equal(out, net.out.bias.expand(4, -1))


def test_blocks_learn_once_the_modulation_moves():
    """Zero-init must not freeze the block: the gate's gradient is non-zero at start."""
    torch.manual_seed(0)
    block = SSMBlock(8, 6)
    h, cond = torch.randn(3, 5, 8), torch.randn(3, 6)
    block(h, cond).pow(2).sum().backward()
    assert block.mod.weight.grad.abs().sum() > 0


def _reference_scan(x, dt, a, B, C, D):
    """Literal per-element loop of s_k = exp(dt_k a) s + dt_k x_k B_k, y = C_k.s + D x_k."""
    b, k, h, p = x.shape
    y = np.zeros(x.shape)
    for i in range(b):
        for hh in range(h):
            for j in range(p):
                s = np.zeros(B.shape[-1])
                for t in range(k):
                    s = np.exp(dt[i, t, hh] * a[hh]) * s + dt[i, t, hh] * x[i, t, hh, j] * B[i, t]
                    y[i, t, hh, j] = C[i, t] @ s + D[hh] * x[i, t, hh, j]
    return y


def test_scan_and_its_matrix_form_match_the_recurrence():
    g = torch.Generator().manual_seed(1)
    b, k, h, p, n = 2, 6, 3, 2, 4
    x = torch.randn(b, k, h, p, generator=g)
    B, C = torch.randn(b, k, n, generator=g), torch.randn(b, k, n, generator=g)  # noqa: N806
    dt = torch.rand(b, k, h, generator=g) * 2
    a, D = -torch.rand(h, generator=g) * 5, torch.randn(h, generator=g)  # noqa: N806
    want = _reference_scan(*(t.double().numpy() for t in (x, dt, a, B, C, D)))
    np.testing.assert_allclose(selective_scan(x, dt, a, B, C, D).numpy(), want, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(ssd(x, dt, a, B, C, D).numpy(), want, rtol=1e-5, atol=1e-5)


def test_matrix_form_is_stable_for_long_strong_decay():
    """Large dt x |a| over many tokens: no overflow (only differences of the cumulative sum
    that are <= 0 are exponentiated)."""
    g = torch.Generator().manual_seed(2)
    x, B, C = (torch.randn(1, 64, 2, 3, generator=g), torch.randn(1, 64, 4, generator=g),  # noqa: N806
               torch.randn(1, 64, 4, generator=g))
    dt, a, D = torch.full((1, 64, 2), 5.0), torch.tensor([-16.0, -0.01]), torch.ones(2)  # noqa: N806
    y = ssd(x, dt, a, B, C, D)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, selective_scan(x, dt, a, B, C, D), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d_conv", [1, 2, 4])
def test_causal_conv_is_the_grouped_conv1d(d_conv):
    torch.manual_seed(0)
    block = SSMBlock(6, 4, d_conv=d_conv)
    x = torch.randn(3, 5, 12)
    want = block.conv(x.transpose(1, 2))[..., :5].transpose(1, 2)
    torch.testing.assert_close(block.causal_conv(x), want, rtol=1e-5, atol=1e-6)


def test_scan_is_causal_and_alternates_direction():
    """A forward block's token k depends only on tokens <= k; a reverse block's on >= k."""
    torch.manual_seed(0)
    for reverse in (False, True):
        block = SSMBlock(8, 6, reverse=reverse)
        torch.nn.init.normal_(block.mod.weight, std=0.5)       # leave the identity
        h, cond = torch.randn(1, 6, 8), torch.randn(1, 6)
        h2 = h.clone()
        h2[:, 2] += torch.randn(8)                             # change token 2 only
        diff = (block(h2, cond) - block(h, cond)).abs().sum(-1)[0]   # (K,)
        before, after = diff[:2], diff[3:]
        if reverse:
            assert after.max() == 0 and before.min() > 0
        else:
            assert before.max() == 0 and after.min() > 0


def test_tiny_ssm_model_trains_saves_loads_and_generates(synthetic, schema, tmp_path):
    torch.set_num_threads(1)
    tiny = {**TINY, "ae_max_steps": 60, "flow_steps": 60, "width": 16, "depth": 2,
            "members": 1}
    out = tmp_path / "ssm"
    m = train_model(synthetic.copy(), schema, out, seed=0, device="cpu", backbone="ssm",
                    tokens=4, d_state=4, heads=2, **tiny)
    arch = m.config["architecture"]
    assert arch["backbone"] == "ssm"
    assert arch["backbone_kw"] == {"width": 16, "depth": 2, "tokens": 4, "d_state": 4,
                                   "d_conv": 4, "expand": 2, "heads": 2}
    assert m.config["training"]["hyperparameters"]["d_state"] == 4
    cond = Condition.parse("T", "A", "CRISPRa")
    a = m.generate(cond, 32, seed=3)
    assert a.n_obs == 32 and np.isfinite(a.layers["counts"].toarray()).all()
    loaded = PerturbModel.load(out, device="cpu")
    assert isinstance(loaded.net.backbone, SSMBackbone)
    for key, t in m.net.state_dict().items():
        assert torch.equal(t, loaded.net.state_dict()[key]), key
    b = loaded.generate(cond, 32, seed=3)
    np.testing.assert_array_equal(a.layers["counts"].toarray(), b.layers["counts"].toarray())
    controls = synthetic[(synthetic.obs["perturbation"] == "control")
                         & (synthetic.obs["cell_type"] == "T")].copy()
    p = loaded.perturb(controls[:8], cond, seed=0)
    assert p.n_obs == 8
