"""Counter-based decoding noise: exact integer hashing, Gaussian statistics, and independence of the batch,
the padding and the device."""
import math

import torch

from difformer.diffusion.noise import candidate_keys, gaussian, mix32


def lowbias32(x: int) -> int:
    """The reference hash in Python's unbounded integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_the_tensor_hash_equals_the_reference_including_products_past_2_63():
    values = [0, 1, 2, 12345, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 0xDEADBEEF, 0x9E3779B9]
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [lowbias32(v) for v in values]
    assert all(0 <= g < 2 ** 32 for g in got)


def keys(n: int, seed: int = 0) -> torch.Tensor:
    src = torch.arange(4, 4 + 3 * n).view(n, 3)
    return candidate_keys(src, src != 0, 1, seed)


def test_noise_is_standard_normal_and_uncorrelated():
    z = gaussian(keys(64), 3, torch.full((64,), 40), (64, 40, 128))  # 327,680 values
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    kurtosis = (z ** 4).mean().item() / z.var().item() ** 2
    assert abs(kurtosis - 3) < 0.05
    for lo, hi, p in ((-1, 1, 0.6827), (-2, 2, 0.9545), (-3, 3, 0.9973)):
        inside = ((z > lo) & (z < hi)).float().mean().item()
        assert abs(inside - p) < 0.005, (lo, hi, inside)
    flat = z.reshape(-1, 128)
    for a, b in ((flat[:, :-1], flat[:, 1:]), (flat[:, :64], flat[:, 64:]),  # neighbours; a pair's cos and sin
                 (z[:, :-1].reshape(-1), z[:, 1:].reshape(-1)), (z[:-1].reshape(-1), z[1:].reshape(-1))):
        corr = torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1].item()
        assert abs(corr) < 0.01
    other_step = gaussian(keys(64), 4, torch.full((64,), 40), (64, 40, 128))
    assert abs(torch.corrcoef(torch.stack([z.reshape(-1), other_step.reshape(-1)]))[0, 1].item()) < 0.01


def test_a_candidate_draws_the_same_noise_in_any_batch_and_padding():
    one = torch.tensor([[7, 8, 3]])
    two = torch.tensor([[4, 5, 6, 3], [7, 8, 3, 0]])
    a = gaussian(candidate_keys(one, one != 0, 2, 0), 5, torch.tensor([3, 3]), (2, 3, 6))
    b = gaussian(candidate_keys(two, two != 0, 2, 0), 5, torch.tensor([4, 4, 3, 3]), (4, 9, 6))
    assert torch.equal(a, b[2:, :3]) and not b[2:, 3:].any()  # same draws, zero beyond the length
    assert not torch.allclose(a[0], a[1])  # two candidates of one source
    assert not torch.allclose(b[0, :3], b[2, :3])  # two sources
    c = gaussian(candidate_keys(one, one != 0, 2, 1), 5, torch.tensor([3, 3]), (2, 3, 6))
    assert not torch.allclose(a, c)  # another decoding seed
    d = gaussian(candidate_keys(one, one != 0, 2, 0), 6, torch.tensor([3, 3]), (2, 3, 6))
    assert not torch.allclose(a, d)  # every step draws afresh
    odd = gaussian(candidate_keys(one, one != 0, 2, 0), 5, torch.tensor([3, 3]), (2, 3, 5))
    assert odd.shape == (2, 3, 5) and odd.abs().min() > 0


def test_candidate_keys_hash_each_source_without_its_padding():
    padded = torch.tensor([[7, 8, 3, 0, 0]])
    alone = torch.tensor([[7, 8, 3]])
    assert torch.equal(candidate_keys(padded, padded != 0, 3, 0), candidate_keys(alone, alone != 0, 3, 0))
    k = candidate_keys(alone, alone != 0, 3, 0)
    assert k.shape == (3, 2) and len(set(map(tuple, k.tolist()))) == 3 and (k >= 0).all() and (k < 2 ** 32).all()


def test_box_muller_tails_reach_but_do_not_pass_the_limit_of_the_uniforms():
    z = gaussian(keys(256), 0, torch.full((256,), 64), (256, 64, 128))  # 2.1M values
    limit = math.sqrt(-2 * math.log(2 ** -24))  # the smallest uniform is 2^-24
    assert 4.5 < z.abs().max().item() <= limit + 1e-4
