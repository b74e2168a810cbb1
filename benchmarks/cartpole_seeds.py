"""Episodes and seconds to solve CartPole-v1: our REINFORCE against PyTorch's example, seeds 0-4.

    python benchmarks/cartpole_seeds.py            # prints a Markdown table (about 2-4 minutes)

"Solved" is the same for both: the average return of the last 100 training episodes reaches 475.
The reference is a re-implementation, for Gymnasium 1.x, of the configuration of PyTorch's
examples/reinforcement_learning/reinforce.py: a 4-128-2 MLP with dropout 0.6, Adam lr 1e-2,
gamma 0.99, standardised reward-to-go, one update per episode. (Its own stopping rule is an
exponential average > 475; here both are judged by the 100-episode average.)
"""
import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]


def load_train():
    spec = importlib.util.spec_from_file_location("cartpole_train", REPO / "cartpole_reinforce" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReferencePolicy(nn.Module):
    """The network of PyTorch's example: Linear(4,128) - Dropout(0.6) - ReLU - Linear(128,2)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 128), nn.Dropout(p=0.6), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, x):
        return torch.log_softmax(self.net(x), dim=-1)


def reference_run(seed: int, max_episodes: int) -> tuple[int | None, float]:
    """Train the reference; return (episode at which the 100-episode average reached 475, seconds)."""
    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    policy = ReferencePolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    eps = np.finfo(np.float32).eps.item()
    window = []
    start = time.perf_counter()
    for episode in range(1, max_episodes + 1):
        obs, _ = env.reset(seed=seed if episode == 1 else None)
        log_probs, rewards, done = [], [], False
        while not done:
            log_p = policy(torch.as_tensor(obs, dtype=torch.float32))
            action = int(torch.multinomial(log_p.exp(), 1))
            obs, reward, terminated, truncated, _ = env.step(action)
            log_probs.append(log_p[action])
            rewards.append(reward)
            done = terminated or truncated
        returns, future = [], 0.0
        for r in reversed(rewards):
            future = r + 0.99 * future
            returns.insert(0, future)
        returns = torch.tensor(returns)
        returns = (returns - returns.mean()) / (returns.std() + eps)
        loss = -(torch.stack(log_probs) * returns).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        window = (window + [sum(rewards)])[-100:]
        if len(window) == 100 and np.mean(window) >= 475:
            return episode, time.perf_counter() - start
    return None, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--max-episodes", type=int, default=1000,
                        help="budget of our REINFORCE (the issue's bar)")
    parser.add_argument("--reference-max-episodes", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = load_train()

    print("| seed | ours: episodes to solve | ours: seconds | ours: greedy eval (100 ep) "
          "| PyTorch example: episodes to solve | PyTorch example: seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    ours_eps, ref_eps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            run_args = train.Args(seed=seed, max_episodes=args.max_episodes, out=f"{tmp}/s{seed}",
                                  log_every=10**9)
            with contextlib.redirect_stdout(io.StringIO()):  # keep the table clean
                summary = train.train(run_args)
            ref_at, ref_seconds = reference_run(seed, args.reference_max_episodes)
            ours_eps.append(summary["solved_at_episode"])
            ref_eps.append(ref_at)
            print(f"| {seed} | {summary['solved_at_episode'] or 'not solved'} | "
                  f"{summary['train_seconds']:.1f} | "
                  f"{summary['greedy_eval_mean']:.1f} | {ref_at or 'not solved'} | {ref_seconds:.1f} |",
                  flush=True)

    def describe(values, budget):
        solved = [v for v in values if v is not None]
        median = np.median([v if v is not None else budget for v in values])
        return f"{len(solved)}/{len(values)} solved, median {median:.0f} episodes"

    print(f"\nours: {describe(ours_eps, args.max_episodes)} (budget {args.max_episodes}); "
          f"PyTorch example: {describe(ref_eps, args.reference_max_episodes)} "
          f"(budget {args.reference_max_episodes}; "
          "unsolved runs count as the budget in the median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
