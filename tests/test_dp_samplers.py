"""Per-example gradients Cohort gives Opacus in closed form match autograd's, example by example."""

from __future__ import annotations

import torch
from opacus import GradSampleModule
from torch import nn

from client.dp import register_samplers
from models.fusion import TanhGate


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)
        self.gate = TanhGate()
        with torch.no_grad():
            self.gate.alpha.fill_(0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.linear(x))


def test_the_gates_per_example_gradient_is_autograds():
    register_samplers()
    torch.manual_seed(0)
    model = Gated()
    inputs = torch.randn(6, 4, 5)  # a sequence per example: the gate sums over positions
    private = GradSampleModule(model, loss_reduction="sum")
    private(inputs).pow(2).sum().backward()
    sampled = model.gate.alpha.grad_sample
    private._close()
    assert sampled is not None and sampled.shape == (6, 1)
    for index in range(6):
        alone = Gated()
        alone.load_state_dict({k: v for k, v in model.state_dict().items()})
        alone(inputs[index : index + 1]).pow(2).sum().backward()
        assert alone.gate.alpha.grad is not None
        torch.testing.assert_close(sampled[index], alone.gate.alpha.grad, rtol=1e-5, atol=1e-6)
