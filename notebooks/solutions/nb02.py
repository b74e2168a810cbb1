"""Solutions to the exercises of notebook 02 (GAE). Try each one before you read it.

Check them, or a file of your own functions with the same names, from the repository root:
    python notebooks/exercise_checks.py nb02 [--file mine.py]
Each function uses only torch (and the ones before it), as a notebook cell would.
"""
import torch


def td_errors(rewards, values, next_values, terminations, gamma):
    """All (T, N). delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)."""
    return rewards + gamma * (1.0 - terminations) * next_values - values


def gae(rewards, values, next_values, terminations, dones, gamma, lam):
    """All (T, N) -> advantages (T, N): A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}, A_T = 0.
    `terminations` cut the bootstrap, `dones` (terminated or truncated) cut the recursion."""
    delta = td_errors(rewards, values, next_values, terminations, gamma)
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[0])  # (N,)
    for t in reversed(range(rewards.shape[0])):
        next_advantage = delta[t] + gamma * lam * (1.0 - dones[t]) * next_advantage
        advantages[t] = next_advantage
    return advantages


def rollout_advantages(rewards, values, last_value, final_values, terminated, truncated, gamma, lam):
    """The rollout as train.py's loop stores it: rewards and values (T, N), values[t] = V(obs_t) of the
    observation acted on at step t; last_value (N,) = V(obs) after the last step; final_values (T, N) =
    V(info["final_obs"]) where an episode ended (0 elsewhere); terminated, truncated: (T, N) bools.
    -> (advantages, returns), returns = advantages + values.

    V(s_{t+1}) is the next row's value, except after the last step (last_value) and where an episode ended:
    with SAME_STEP autoreset, values[t + 1] is then the value of the NEXT episode's first observation. A
    truncated episode bootstraps from its true final observation; a terminated one does not bootstrap."""
    next_values = torch.cat([values[1:], last_value.unsqueeze(0)])                  # (T, N)
    next_values = torch.where(truncated & ~terminated, final_values, next_values)
    advantages = gae(rewards, values, next_values, terminated.float(), (terminated | truncated).float(),
                     gamma, lam)
    return advantages, advantages + values
