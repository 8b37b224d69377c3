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
from engine.nn.ssm import SSMBackbone, SSMBlock, selective_scan

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
                                   "d_conv": 4, "expand": 2}
    with pytest.raises(TypeError, match=r"the ssm backbone has no option 'heads'"):
        ModelConfig.from_overrides("ssm", heads=2)


def test_config_module_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys, engine.config, engine.nn.specs; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-1000:]


@pytest.mark.parametrize("kw", [{}, {"width": 12, "depth": 2, "tokens": 3, "d_state": 5,
                                     "d_conv": 2, "expand": 3}])
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


def _reference_scan(x, dt, A, B, C, D):
    """Literal per-element loop of s_k = exp(dt A) s + dt B x, y = C.s + D x."""
    b, k, e = x.shape
    n = A.shape[1]
    y = np.zeros((b, k, e))
    for i in range(b):
        for j in range(e):
            s = np.zeros(n)
            for t in range(k):
                s = np.exp(dt[i, t, j] * A[j]) * s + dt[i, t, j] * B[i, t] * x[i, t, j]
                y[i, t, j] = C[i, t] @ s + D[j] * x[i, t, j]
    return y


def test_selective_scan_matches_the_recurrence():
    g = torch.Generator().manual_seed(1)
    b, k, e, n = 2, 5, 3, 4
    x, B, C = (torch.randn(b, k, e, generator=g), torch.randn(b, k, n, generator=g),
               torch.randn(b, k, n, generator=g))
    dt = torch.rand(b, k, e, generator=g)
    A, D = -torch.rand(e, n, generator=g) * 3, torch.randn(e, generator=g)
    got = selective_scan(x, dt, A, B, C, D).numpy()
    want = _reference_scan(*(t.double().numpy() for t in (x, dt, A, B, C, D)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


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
                    tokens=4, d_state=4, **tiny)
    arch = m.config["architecture"]
    assert arch["backbone"] == "ssm"
    assert arch["backbone_kw"] == {"width": 16, "depth": 2, "tokens": 4, "d_state": 4,
                                   "d_conv": 4, "expand": 2}
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
