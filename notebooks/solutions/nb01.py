"""Solutions to the exercises of notebook 01 (returns and REINFORCE). Try each one before you read it.

Check them, or a file of your own functions with the same names, from the repository root:
    python notebooks/exercise_checks.py nb01 [--file mine.py]
Each function uses only torch, as a notebook cell would.
"""
import torch


def reward_to_go(rewards, gamma):
    """rewards: (T,) tensor of one episode -> (T,) tensor G_t = r_t + gamma * G_{t+1}, with G_T = 0."""
    returns = torch.zeros(len(rewards))
    future = 0.0
    for t in reversed(range(len(rewards))):  # walk the episode backwards
        future = rewards[t] + gamma * future
        returns[t] = future
    return returns


def reinforce_weights(rewards, gamma):
    """rewards: (T,) -> (T,) weights of the log-probs: the reward-to-go minus its mean (the baseline), divided
    by its std (+ 1e-8); an episode of one step has no spread and gets weight 0."""
    G = reward_to_go(rewards, gamma)
    centred = G - G.mean()
    if len(G) < 2:
        return centred
    return centred / (G.std() + 1e-8)


def reinforce_gradient(logits, actions, weights):
    """logits: (T, A), the policy's logits at each step; actions: (T,); weights: (T,).
    -> (T, A), the gradient of L = -sum_t w_t log pi(a_t | s_t) w.r.t. the logits, without autograd:
    row t is -w_t (onehot(a_t) - softmax(logits_t))."""
    probs = torch.softmax(logits, dim=-1)                                       # (T, A)
    onehot = torch.nn.functional.one_hot(actions, logits.shape[-1]).float()     # (T, A)
    return -weights.unsqueeze(1) * (onehot - probs)
