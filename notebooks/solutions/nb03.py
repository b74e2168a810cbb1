"""Solutions to the exercises of notebook 03 (PPO's clipped objective). Try each one before you read it.

Check them, or a file of your own functions with the same names, from the repository root:
    python notebooks/exercise_checks.py nb03 [--file mine.py]
Each function uses only torch, as a notebook cell would.
"""
import torch


def objective_slope(advantages, ratios, clip_coef):
    """(n,), (n,) -> (n,): d/d rho of min(rho A, clip(rho, 1 - eps, 1 + eps) A), by the table of section 2.
    The slope is A, except where clipping removes it: A > 0 above 1 + eps, A < 0 below 1 - eps."""
    clipped = ((advantages > 0) & (ratios > 1 + clip_coef)) | ((advantages < 0) & (ratios < 1 - clip_coef))
    return torch.where(clipped, torch.zeros_like(advantages), advantages)


def clipped_policy_loss(new_logprob, old_logprob, advantages, clip_coef):
    """(n,) each -> (loss, approx_kl, clipfrac): loss = -mean(min(rho A, clip(rho) A)); approx_kl the k3
    estimate mean((rho - 1) - log rho); clipfrac the share of samples with |rho - 1| > clip_coef."""
    log_ratio = new_logprob - old_logprob
    ratio = log_ratio.exp()
    objective = torch.min(ratio * advantages, ratio.clamp(1 - clip_coef, 1 + clip_coef) * advantages)
    approx_kl = ((ratio - 1) - log_ratio).mean().detach()
    clipfrac = ((ratio - 1).abs() > clip_coef).float().mean()
    return -objective.mean(), approx_kl, clipfrac


def clipped_value_loss(new_values, old_values, returns, clip_coef):
    """(n,) each -> 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2))."""
    clipped_values = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max((new_values - returns) ** 2, (clipped_values - returns) ** 2).mean()
