"""Solutions to the exercises of notebook 05 (RLHF rewards). Try each one before you read it.

Check them, or a file of your own functions with the same names, from the repository root:
    python notebooks/exercise_checks.py nb05 [--file mine.py]
Each function uses only torch (and the ones before it), as a notebook cell would.
"""
import torch


def preference_loss(chosen, rejected):
    """(N,) scores of the chosen and the rejected answers -> -log sigmoid(r_c - r_r), averaged over the pairs.
    logsigmoid, not log(sigmoid(.)): sigmoid(-200) is 0 in float32, and log 0 = -inf."""
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def shaped_rewards(logp, ref_logp, mask, score, beta):
    """logp, ref_logp, mask: (B, T), score: (B,) -> (B, T): r_t = -beta (log pi - log pi_ref) on each real
    token, 0 on padding, and the score added on the last real token (index: the length - 1)."""
    rewards = -beta * (logp - ref_logp) * mask
    last = mask.sum(dim=1).long() - 1                                   # (B,)
    rewards[torch.arange(len(score)), last] += score
    return rewards


def token_advantages(rewards, values, mask, gamma, lam):
    """All (B, T), responses right-padded -> (advantages, returns). GAE over the real tokens, with
    V_{t+1} = 0 after the last one (the response ends there, nothing to bootstrap from), then whitened over
    the real tokens of the batch (var with n - 1, + 1e-8); returns = the advantages before whitening + V."""
    next_real = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)  # is token t + 1 real?
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1) * next_real
    deltas = (rewards + gamma * next_values - values) * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])                           # (B,): A_{t+1}, 0 past the end
    for t in reversed(range(rewards.shape[1])):
        running = deltas[:, t] + gamma * lam * running * next_real[:, t]
        advantages[:, t] = running
    returns = (advantages + values) * mask
    real = advantages[mask.bool()]
    whitened = (advantages - real.mean()) / torch.sqrt(real.var() + 1e-8) * mask
    return whitened, returns
