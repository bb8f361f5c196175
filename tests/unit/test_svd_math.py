"""atlas.models.svd against numpy on small explicit matrices."""

from __future__ import annotations

import numpy as np
import torch

from atlas.models.svd import (
    canonical_signs,
    degenerate_groups,
    factored_svd,
    relative_gaps,
    spectrum_stats,
)


def test_factored_svd_reconstructs_and_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    left = torch.randn(5, 40, 8, generator=gen)
    right = torch.randn(5, 8, 40, generator=gen)
    svd = factored_svd(left, right)
    product = (left @ right).double().numpy()
    for b in range(5):
        s = np.linalg.svd(product[b], compute_uv=False)[:8]
        np.testing.assert_allclose(svd.S[b].numpy(), s, rtol=1e-5)
        recon = (
            svd.U[b].double().numpy()
            @ np.diag(svd.S[b].double().numpy())
            @ svd.V[b].double().numpy().T
        )
        np.testing.assert_allclose(recon, product[b], atol=1e-4 * s[0])
        np.testing.assert_allclose(svd.U[b].T @ svd.U[b], np.eye(8), atol=1e-5)
        np.testing.assert_allclose(svd.V[b].T @ svd.V[b], np.eye(8), atol=1e-5)


def test_canonical_signs_make_largest_magnitude_positive() -> None:
    top = np.array([3.0, 1.0, 2.0])
    bottom = np.array([-1.0, -4.0, -2.0])
    np.testing.assert_array_equal(canonical_signs(top, bottom), [1, -1, 1])


def test_spectrum_stats_against_definitions() -> None:
    s = np.array([[4.0, 2.0, 1.0, 0.0]])
    stats = spectrum_stats(s, (4, 6))
    assert stats.sigma_max[0] == 4.0
    assert np.isclose(stats.frobenius_norm[0], np.sqrt(21.0))
    assert np.isclose(stats.stable_rank[0], 21.0 / 16.0)
    p = np.array([4, 2, 1]) / 7
    assert np.isclose(stats.effective_rank[0], np.exp(-(p * np.log(p)).sum()))
    assert stats.numerical_rank[0] == 3


def test_gaps_and_degenerate_groups() -> None:
    s = np.array([[10.0, 5.0, 4.9995, 4.9990, 1.0, 1e-6]])
    gaps = relative_gaps(s, full_rank=8)  # two more zero singular values follow
    np.testing.assert_allclose(gaps[0], [0.5, 5e-5, 5e-5, 5e-5, 0.0999999, 1e-7], rtol=1e-3)
    groups = degenerate_groups(s, tolerance=1e-4)
    np.testing.assert_array_equal(groups[0], [-1, 1, 1, 1, -1, -1])


def test_factored_svd_handles_rank_deficient_and_ill_conditioned_heads() -> None:
    """A pruned head (zero column) and a near-collinear one take the Householder path."""
    gen = torch.Generator().manual_seed(1)
    left = torch.randn(4, 30, 6, generator=gen)
    right = torch.randn(4, 6, 30, generator=gen)
    left[0, :, 2] = 0.0
    left[1, :, 0] = left[1, :, 1] * (1 + 1e-7)
    svd = factored_svd(left, right)
    for b in range(4):
        product = (left[b] @ right[b]).double().numpy()
        s = np.linalg.svd(product, compute_uv=False)[:6]
        np.testing.assert_allclose(svd.S[b].numpy(), s, atol=1e-5 * s[0])
        recon = (svd.U[b] * svd.S[b]).double().numpy() @ svd.V[b].double().numpy().T
        np.testing.assert_allclose(recon, product, atol=1e-5 * s[0])
        keep = s > 1e-3 * s[0]  # vectors of zero singular values are arbitrary
        gram = (svd.U[b][:, keep].T @ svd.U[b][:, keep]).numpy()
        np.testing.assert_allclose(gram, np.eye(keep.sum()), atol=1e-5)


def test_factored_svd_of_a_head_wider_than_the_model() -> None:
    """d_head 24 over d_model 10 (and 16 out): rank 10, from the reduced QR factors (the
    Cholesky path's square R did not fit, a shape error at ingest)."""
    gen = torch.Generator().manual_seed(2)
    left = torch.randn(3, 10, 24, generator=gen)
    right = torch.randn(3, 24, 16, generator=gen)
    svd = factored_svd(left, right)
    assert svd.S.shape == (3, 10) and svd.U.shape == (3, 10, 10) and svd.V.shape == (3, 16, 10)
    for b in range(3):
        product = (left[b] @ right[b]).double().numpy()
        s = np.linalg.svd(product, compute_uv=False)
        np.testing.assert_allclose(svd.S[b].numpy(), s, rtol=1e-5)
        recon = (svd.U[b] * svd.S[b]).double().numpy() @ svd.V[b].double().numpy().T
        np.testing.assert_allclose(recon, product, atol=1e-4 * s[0])
        np.testing.assert_allclose(svd.V[b].T @ svd.V[b], np.eye(10), atol=1e-5)


def test_a_zero_matrix_has_every_rank_zero() -> None:
    stats = spectrum_stats(np.zeros((2, 5)), (8, 8))
    for rank in (stats.stable_rank, stats.effective_rank, stats.numerical_rank):
        np.testing.assert_array_equal(rank, [0, 0])
    np.testing.assert_array_equal(stats.sigma_max, [0, 0])
