"""The sampled-exactness check shared by the lossless decoders' tests (speculative, MTP, lookup).

``samples_follow(sample, runs, target, wrong)`` draws ``runs`` outputs, counts them in a table shaped like
``target`` (a probability table over the sampled tokens: (V,) for one token, (V,) * L for L tokens), and
asserts that

1. no sample falls on a cell of probability 0 under ``target``;
2. Pearson's chi-square goodness-of-fit test accepts ``target`` at the 0.999 level;
3. the same test, on the same counts, rejects ``wrong`` (a distribution a plausible bug would sample, e.g.
   the draft's own): the test has the power to see such a bug at this number of runs.

The seeds are fixed, so each test is deterministic; a correct sampler fails a given seed with probability
1e-3. Returns the counts for test-specific checks.
"""

import math
from collections.abc import Callable, Sequence

import pytest
import torch

Z_999 = 3.0902  # the standard normal's 0.999 quantile


def chi_square_critical(df: int, z: float = Z_999) -> float:
    """Upper critical value of χ²(df) by Wilson–Hilferty (accurate to ~1% for df >= 3)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; cells expected below ``min_expected`` are pooled."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    expected = probs * counts.sum()
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = exp > 0  # an empty pool is no cell
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), int(keep.sum()) - 1


def _samples_follow(
    sample: Callable[[int], int | Sequence[int] | torch.Tensor],
    runs: int,
    target: torch.Tensor,
    wrong: torch.Tensor,
) -> torch.Tensor:
    target, wrong = target.double(), wrong.double()
    assert target.shape == wrong.shape
    torch.testing.assert_close(target.sum().item(), 1.0)
    torch.testing.assert_close(wrong.sum().item(), 1.0)
    counts = torch.zeros(target.shape, dtype=torch.float64)
    for run in range(runs):
        counts[tuple(torch.as_tensor(sample(run)).flatten().tolist())] += 1
    assert counts[target == 0].sum() == 0, "a sample fell where the target has no mass"
    stat, df = chi_square(counts, target)
    assert df >= 3, f"only {df} degrees of freedom: too few runs for the chi-square approximation"
    assert stat < chi_square_critical(df), f"chi-square {stat:.1f} >= {chi_square_critical(df):.1f} (df={df})"
    wrong_stat, wrong_df = chi_square(counts, wrong)
    impossible = counts[wrong == 0].sum() > 0  # samples where the wrong law has no mass reject it outright
    assert impossible or wrong_stat > chi_square_critical(wrong_df), (
        f"no power: the wrong distribution also passes (chi-square {wrong_stat:.1f}, df={wrong_df})"
    )
    return counts


@pytest.fixture(scope="session")
def samples_follow():
    """``samples_follow(sample, runs, target, wrong) -> counts``: see the module docstring."""
    return _samples_follow
