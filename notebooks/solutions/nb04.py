"""Solutions to the exercises of notebook 04 (GRPO). Try each one before you read it.

Check them, or a file of your own functions with the same names, from the repository root:
    python notebooks/exercise_checks.py nb04 [--file mine.py]
Each function uses only torch (and the ones before it), as a notebook cell would.
"""
import torch


def grpo_advantages(rewards, scale_by_std):
    """(num_groups, G) -> (num_groups, G): r - mean of its group, divided by the group's sample std + 1e-4
    when scale_by_std (GRPO), not divided otherwise (Dr. GRPO)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + 1e-4)


def k3_estimate(logp, ref_logp):
    """Per-token k3 estimate of KL(pi || pi_ref) from the sampled token: x - log x - 1, x = pi_ref / pi."""
    log_x = ref_logp - logp
    return log_x.exp() - log_x - 1


def eos_mask(completion_ids, eos_id):
    """(B, T) token ids -> (B, T) mask: 1 up to and including the first EOS, 0 after it; all 1 without one."""
    is_eos = (completion_ids == eos_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # how many EOS came strictly before each position
    return (eos_before == 0).long()


def dr_grpo_loss(logp, old_logp, rewards, mask, epsilon, epsilon_high, max_completion_length):
    """logp, old_logp, mask: (B, T), the B = num_groups * G completions group after group; rewards:
    (num_groups, G).
    Dr. GRPO: the advantage r - mean(group), not divided by the std, the same for every token of a completion;
    per token -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A); summed over the real tokens and divided
    by the constant B * max_completion_length, so no completion weighs more or less for its length."""
    advantages = grpo_advantages(rewards, scale_by_std=False).reshape(-1, 1)  # (B, 1)
    ratio = (logp - old_logp).exp()
    per_token = -torch.min(ratio * advantages, ratio.clamp(1 - epsilon, 1 + epsilon_high) * advantages)
    return (per_token * mask).sum() / (mask.shape[0] * max_completion_length)
