"""Toy-field tests of the objectives (issue 9 #8): exact fields, Euler / DDIM round trips."""

from __future__ import annotations

import math

import torch

from engine.diffusion.sampler import sample
from engine.diffusion.schedules import DDPM, RectifiedFlow

MU = 2.5


class Field:
    """A "network" with an exact velocity / noise field: f(x, t) -> prediction."""

    def __init__(self, f) -> None:
        self.f = f

    def __call__(self, x, t, c):
        return self.f(x, float(t[0]))


def _run(objective, net, x, grid):
    return sample(net, objective, x, None, None, 1.0, grid)


def test_rectified_flow_straight_field_moves_n01_to_nmu1_exactly():
    # coupling eps = x0 - mu: the velocity eps - x0 is the constant -mu
    rf = RectifiedFlow()
    noise = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = _run(rf, Field(lambda x, t: torch.full_like(x, -MU)), noise, rf.grid(7))
    torch.testing.assert_close(out, noise + MU, rtol=0, atol=1e-12)


def _marginal_velocity(x, t):
    # independent coupling x0 ~ N(mu, 1), eps ~ N(0, 1), x_t = (1 - t) x0 + t eps:
    # v(x, t) = E[eps - x0 | x_t = x]
    s2 = (1 - t) ** 2 + t ** 2
    return (2 * t - 1) / s2 * (x - (1 - t) * MU) - MU


def test_rectified_flow_marginal_field_transports_n01_to_nmu1():
    rf = RectifiedFlow()
    noise = torch.randn(50_000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = _run(rf, Field(_marginal_velocity), noise, rf.grid(400))
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) - 1.0) < 0.02


def test_euler_invert_then_forward_round_trip_converges():
    rf = RectifiedFlow()
    x0 = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None] + MU
    errors = []
    for steps in (25, 100, 400):
        grid = rf.grid(steps)
        noise = _run(rf, Field(_marginal_velocity), x0, grid[::-1])   # data -> noise
        back = _run(rf, Field(_marginal_velocity), noise, grid)       # noise -> data
        errors.append(float((back - x0).abs().max()))
    # Euler is first order: 4x the steps, about a quarter of the round-trip error
    assert errors[0] > 3 * errors[1] > 9 * errors[2]
    assert errors[2] < 0.03
    # the inverted cells are the noise of the exact flow: N(0, 1)-scaled positions
    assert abs(float(noise.mean())) < 0.05


def test_ddim_with_the_exact_noise_is_exact_both_ways():
    ddpm = DDPM()
    a = torch.tensor([[MU, -1.0, 0.3]], dtype=torch.float64)

    def eps(x, t):   # data is the point a: eps = (x - sqrt(ab) a) / sqrt(1 - ab)
        ab = ddpm.alpha_bar(t)
        return (x - math.sqrt(ab) * a) / math.sqrt(1 - ab)

    e = torch.randn(500, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = ddpm.grid(30)
    ab_t, ab_0 = ddpm.alpha_bar(grid[0]), ddpm.alpha_bar(grid[-1])
    x_t = math.sqrt(ab_t) * a + math.sqrt(1 - ab_t) * e
    x_0 = _run(ddpm, Field(eps), x_t, grid)
    torch.testing.assert_close(x_0, math.sqrt(ab_0) * a + math.sqrt(1 - ab_0) * e,
                               rtol=0, atol=1e-6)   # t reaches the net as float32
    back = _run(ddpm, Field(eps), x_0, grid[::-1])
    torch.testing.assert_close(back, x_t, rtol=0, atol=1e-6)   # t reaches the net as float32


def test_ddpm_corrupt_matches_its_schedule():
    ddpm = DDPM()
    x0, noise = torch.ones(4, 2), torch.zeros(4, 2)
    t = torch.tensor([0.0, 0.25, 0.5, ddpm.t_max])
    xt, target = ddpm.corrupt(x0, noise, t)
    torch.testing.assert_close(xt[:, 0], ddpm.alpha_bar(t).sqrt())
    assert torch.equal(target, noise)
    assert ddpm.grid(4)[0] == ddpm.t_max and ddpm.grid(4)[-1] == 0.0
