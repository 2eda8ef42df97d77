"""Worked solutions for notebook 08 (Sampling and evaluation: is the model any good?). Try the cells yourself
first; with SOLUTIONS = True in the notebook's parameters cell the checks run these instead of your cells (CI runs
both ways)."""

import torch


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)): the Fréchet distance of two Gaussians
    (Dowson & Landau 1982), which FID evaluates on feature statistics (Heusel et al. 2017).
    mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances. Returns a 0-dim tensor."""
    # The mean term: the *squared* Euclidean distance between the two means.
    mean_term = ((mu1 - mu2) ** 2).sum()
    # The cross term needs tr((sigma1 sigma2)^(1/2)), a *matrix* square root. The trace of a matrix is the sum of
    # its eigenvalues, and the eigenvalues of a matrix square root are the square roots of the eigenvalues. The
    # product of two covariance matrices is not symmetric, but it is similar to the symmetric positive
    # semi-definite sigma1^(1/2) sigma2 sigma1^(1/2), so its eigenvalues are real and >= 0: take the real part
    # and clamp the tiny negative values rounding leaves behind before the square root.
    eigenvalues = torch.linalg.eigvals(sigma1 @ sigma2).real.clamp(min=0)
    trace_sqrt = eigenvalues.sqrt().sum()
    # Put it together; identical Gaussians give 0 because tr(sigma) + tr(sigma) - 2 tr(sigma) = 0.
    return mean_term + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt


def inception_score(probs):
    """exp(mean_x KL(p(y|x) || p(y))), p(y) the mean of the rows: the Inception Score (Salimans et al. 2016)
    of N samples in one split. probs: (N, K) class probabilities, rows summing to 1. Returns a 0-dim
    tensor between 1 and K."""
    # p(y): the marginal class distribution of *these* samples, the mean of the rows, kept (1, K) to broadcast.
    marginal = probs.mean(dim=0, keepdim=True)
    # KL(p(y|x) || p(y)) for each sample: sum over classes of p log(p / p(y)), weighted by the sample's own p(y|x).
    # (Probabilities from a softmax are never exactly 0; a hard 0 would need 0 log 0 = 0.)
    kl = (probs * (probs.log() - marginal.log())).sum(dim=1)
    # Average the KL terms over the samples first, then exponentiate.
    return kl.mean().exp()
