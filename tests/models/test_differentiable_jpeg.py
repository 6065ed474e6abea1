"""The differentiable JPEG (models/purify/differentiable.py) and its use as the backward pass of adaptive attacks
through the jpeg purifier: close to PIL's JPEG, the same quantisation tables, the cubic rounding's gradient, and an
attack through it far stronger than BPDA's identity on the demo detector."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from models import checkpoint
from models import purify as purifiers
from models.attacks.adaptive import Defended, Defense, judge, resolve_defense
from models.attacks.measure import attack_and_measure
from models.checkpoint import DEMO_CHECKPOINTS
from models.detector import FAKE_INDEX
from models.images import encode_jpeg, psnr
from models.purify.differentiable import (
    CHROMA_TABLE,
    LUMA_TABLE,
    bitdepth_differentiable,
    cubic_round,
    jpeg_differentiable,
    quant_table,
)
from tests.models.test_adaptive import conv_model, demo_fakes, input_grad


def photos(h: int = 64, w: int = 64) -> Tensor:
    """Crops of skimage's photographs (natural images, as JPEG is made for), ``h`` x ``w``."""
    from skimage import data

    out = []
    for pic in (data.astronaut(), data.coffee(), data.chelsea()):
        small = Image.fromarray(pic).resize((pic.shape[1] // 4, pic.shape[0] // 4))
        img = torch.from_numpy(np.array(small)).permute(2, 0, 1).float() / 255
        out += [img[:, :h, :w], img[:, -h:, -w:]]
    return torch.stack(out)


@pytest.mark.parametrize("quality", [10, 50, 75, 95])
def test_the_quantisation_tables_are_the_ones_pil_writes(quality: int) -> None:
    with Image.open(io.BytesIO(encode_jpeg(photos()[0], quality=quality))) as im:
        written = im.quantization
    assert [int(v) for v in written[0]] == quant_table(LUMA_TABLE, quality).flatten().int().tolist()
    assert [int(v) for v in written[1]] == quant_table(CHROMA_TABLE, quality).flatten().int().tolist()


@pytest.mark.parametrize(("h", "w"), [(64, 64), (37, 51)])
def test_the_differentiable_jpeg_is_close_to_pils(h: int, w: int) -> None:
    x = photos(h, w)
    real = purifiers.get("jpeg").fn(x, quality=75).image
    approx = jpeg_differentiable(x, quality=75)
    # Far closer to the real JPEG than the input is: the model has its chroma subsampling, quantisation and upsampling.
    assert float(psnr(real, approx).median()) >= 40
    assert bool((psnr(real, approx) > psnr(real, x) + 6).all())


def test_the_rounding_surrogates_round_exactly_with_the_cubic_gradient() -> None:
    v = torch.tensor([0.0, 0.25, 0.5 - 1e-4, 1.0, -1.25], requires_grad=True)
    r = cubic_round(v)
    assert r.tolist() == torch.round(v.detach()).tolist()
    (g,) = torch.autograd.grad(r.sum(), v)
    torch.testing.assert_close(g, 3 * (v.detach() - torch.round(v.detach())) ** 2)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(bitdepth_differentiable(x, bits=4), purifiers.get("bitdepth").fn(x, bits=4).image)


def test_through_jpeg_the_attack_differentiates_the_approximation_around_the_real_jpeg() -> None:
    det, x = conv_model(), photos(16, 16)[:2]
    defense = resolve_defense({"method": "jpeg", "quality": 50})
    assert defense is not None and defense.gradient == "approx" and defense.describe()["bpda"] == "approx"
    out, g = input_grad(Defended(det, defense), x)
    real = purifiers.get("jpeg").fn(x, quality=50).image
    want_out, at_real = input_grad(det, real)
    torch.testing.assert_close(out, want_out)  # the forward pass is PIL's JPEG
    xg = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(jpeg_differentiable(xg, quality=50), xg, grad_outputs=at_real)
    torch.testing.assert_close(g, want)  # the backward pass: the approximation's Jacobian at x, applied to it
    assert not torch.allclose(g, at_real)  # not the identity
    _, straight = input_grad(Defended(det, Defense(purifier="jpeg", params={"quality": 50}, bpda="identity")), x)
    torch.testing.assert_close(straight, at_real)  # the identity on request (a comparison)
    with pytest.raises(ValueError, match="approx"):
        Defense(purifier="median", bpda="approx")


@pytest.mark.slow
def test_adaptive_pgd_through_the_differentiable_jpeg_beats_the_identity(demo_test_split: tuple[Path, object]) -> None:
    """At 2/255 through JPEG-75 the identity BPDA gains little over ignoring the purifier on the demo detector; the
    differentiable JPEG's gradient fools most of the fakes those leave (docs/ATTACKS.md, "Which gradient")."""
    det = checkpoint.load(DEMO_CHECKPOINTS / "demo-resnet18").detector
    x = demo_fakes(demo_test_split[0], 36)
    with torch.no_grad():
        x = x[det.p_fake(x) >= 0.5][:12]
    y = torch.full((len(x),), FAKE_INDEX, dtype=torch.long)
    params = {"eps": 2 / 255, "steps": 10, "step_size": 0.5 / 255}

    def kept(bpda: str | None) -> int:
        defense = Defense(purifier="jpeg", params={"quality": 75}, bpda=bpda)  # type: ignore[arg-type]
        done = attack_and_measure("pgd", det, x, params=params, y=y, defense=defense)
        return sum(not r.success for r in done)

    plain = attack_and_measure("pgd", det, x, params=params, y=y)
    transfer = int((judge(det, torch.stack([r.adv for r in plain]), Defense("jpeg"), fake_index=FAKE_INDEX).p_fake
                    >= 0.5).sum())  # fmt: skip
    identity, declared = kept("identity"), kept(None)
    assert len(x) == 12 and transfer >= 6, transfer  # JPEG-75 does stop most of this attack when it is ignored
    assert declared <= identity - 4 and declared <= transfer - 4, (transfer, identity, declared)
