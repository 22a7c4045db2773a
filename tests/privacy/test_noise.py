import pytest
import torch

from fedlrs.privacy.noise import GaussianNoise

SOURCES = [pytest.param(lambda: GaussianNoise(secure=True), id="secure"),
           pytest.param(lambda: GaussianNoise(secure=False, seed=7), id="seeded")]


@pytest.mark.parametrize("make", SOURCES)
def test_plain_noise_has_claimed_std(make):
    draws = make().sample((400_000,), std=2.5, dtype=torch.float64)
    assert abs(draws.mean().item()) < 0.02
    assert draws.std().item() == pytest.approx(2.5, rel=0.05)
    # Gaussian, not just the right variance: kurtosis 3
    assert ((draws / draws.std()) ** 4).mean().item() == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize("make", SOURCES)
def test_symmetric_noise_has_claimed_std(make):
    E = make().sample((400, 30, 30), std=0.7, symmetric=True)
    assert torch.equal(E, E.transpose(-1, -2))
    iu = torch.triu_indices(30, 30, offset=1)
    off = E[:, iu[0], iu[1]]
    diag = torch.diagonal(E, dim1=-2, dim2=-1)
    assert off.std().item() == pytest.approx(0.7, rel=0.05)
    assert diag.std().item() == pytest.approx(0.7, rel=0.05)


def test_seeded_is_reproducible_and_secure_is_not():
    a = GaussianNoise(secure=False, seed=1).sample((5,), std=1.0)
    b = GaussianNoise(secure=False, seed=1).sample((5,), std=1.0)
    assert torch.equal(a, b)
    noise = GaussianNoise()
    assert not torch.equal(noise.sample((5,), std=1.0), noise.sample((5,), std=1.0))


def test_dtype_device_and_validation():
    out = GaussianNoise(secure=False, seed=0).sample((3, 2), std=1.0, dtype=torch.float32)
    assert out.dtype == torch.float32 and out.shape == (3, 2)
    with pytest.raises(ValueError, match="std == -1"):
        GaussianNoise().sample((2,), std=-1)
    with pytest.raises(ValueError, match="symmetric"):
        GaussianNoise().sample((2, 3), std=1.0, symmetric=True)
    with pytest.raises(ValueError, match="seed == 3"):
        GaussianNoise(secure=True, seed=3)
