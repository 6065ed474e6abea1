"""CW-L2's rounding-aware finish (models/attacks/cw.py ``round_to_8bit``): successes survive the 8-bit file."""

from __future__ import annotations

import torch

from models.attacks import cw_l2
from models.attacks.measure import deliver
from tests.models.test_attacks import images, linear_model


def survivors(model: torch.nn.Module, adv: torch.Tensor, y: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    delivered, _ = deliver(adv, "png")
    with torch.no_grad():
        return success & (model(delivered).argmax(dim=1) != y)


def test_rounding_aware_successes_survive_delivery_at_least_as_often() -> None:
    model = linear_model(seed=3)
    x = torch.round(images(16, seed=5) * 255) / 255  # an 8-bit upload
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    kw = {"kappa": 0.0, "c_init": 1.0, "search_steps": 3, "max_iterations": 50, "lr": 0.05}
    plain = cw_l2(model, x, y, **kw, generator=torch.Generator().manual_seed(0))
    rounded = cw_l2(model, x, y, **kw, round_finish=True, generator=torch.Generator().manual_seed(0))
    kept_plain = survivors(model, plain.adv, y, plain.success)
    kept = survivors(model, rounded.adv, y, rounded.success)
    assert bool(plain.success.any())
    assert torch.equal(kept, rounded.success)  # every success it reports holds for the delivered file
    assert int(kept.sum()) >= int(kept_plain.sum())
    assert torch.equal(torch.round(rounded.adv * 255) / 255, rounded.adv)  # on the 8-bit grid already
    l2 = (rounded.adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(rounded.l2, torch.where(rounded.success, l2, torch.zeros_like(l2)))
    assert torch.equal(rounded.adv[~rounded.success], x[~rounded.success])  # failures come back clean
