"""REINFORCE (Monte-Carlo policy gradient) on CartPole-v1.

    python cartpole_reinforce/train.py                  # seed 0, writes runs/cartpole_reinforce_s0/
    python cartpole_reinforce/train.py --seed 3 --save-to cartpole_reinforce/policy.pt

The oldest policy-gradient method: play one whole episode with the current stochastic policy,
compute the discounted return that followed every action, and push up the log-probability of each
action in proportion to that return. A policy network only, no critic.

Paper: R. J. Williams, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning", Machine Learning 8, 1992. Sutton & Barto, "Reinforcement Learning: An
Introduction" (2nd ed.), section 13.3.
Notebook: notebooks/01_returns_and_reinforce.ipynb walks through the math below.
"""
import argparse
import csv
import dataclasses
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

FOLDER = Path(__file__).resolve().parent
SHIPPED_WEIGHTS = FOLDER / "policy.pt"


@dataclass
class Args:
    seed: int = field(default=0, metadata={"help": "seed for python, numpy, torch and the env"})
    max_episodes: int = field(default=1000, metadata={"help": "give up after this many episodes"})
    lr: float = field(default=5e-3, metadata={"help": "Adam learning rate"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor of the returns"})
    hidden: int = field(default=64, metadata={"help": "width of the policy's hidden layer"})
    solve_score: float = field(default=475.0, metadata={
        "help": "moving-average return that counts as solved (CartPole-v1's threshold)"})
    solve_window: int = field(default=100, metadata={"help": "episodes in the moving average"})
    eval_episodes: int = field(default=100, metadata={"help": "greedy episodes that confirm a solve"})
    out: str = field(default="", metadata={
        "help": "run directory, new or empty (default: the first free one of "
                "runs/cartpole_reinforce_s<seed>, -2, -3 ...)"})
    save_to: str = field(default="", metadata={
        "help": "also copy the final weights to this .pt file: a new one, or a checkpoint of this script "
                "to replace (e.g. cartpole_reinforce/policy.pt)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (a 4-128-2 MLP is fastest on one)"})
    device: str = field(default="auto", metadata={
        "help": "cpu, cuda, cuda:N or auto (cuda when torch sees a GPU; this small a net is fast on cpu)"})
    log_every: int = field(default=50, metadata={"help": "print a summary line every N episodes"})


# ---------------------------------------------------------------------------------------------
# Environment and policy
# ---------------------------------------------------------------------------------------------
def make_env(render_mode=None) -> gym.Env:
    return gym.make("CartPole-v1", render_mode=render_mode)


class Policy(nn.Module):
    """pi(a|s): a one-hidden-layer MLP from the 4 state numbers to logits over the 2 pushes."""

    def __init__(self, obs_dim: int = 4, n_actions: int = 2, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)  # (B, n_actions) logits

    def act(self, obs: np.ndarray, greedy: bool) -> tuple[int, torch.Tensor]:
        """Pick an action; return it with its log-probability (kept in the graph for the update)."""
        logits = self(torch.as_tensor(obs, dtype=torch.float32, device=self.net[0].weight.device))
        log_probs = torch.log_softmax(logits, dim=-1)
        action = int(log_probs.argmax()) if greedy else int(torch.multinomial(log_probs.exp(), 1))
        return action, log_probs[action]


def load_policy(path) -> Policy:
    """Load a state_dict written by this script; raise ValueError with one readable sentence."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"weights file not found: {path}")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a plain file"
        raise ValueError(f"{path} is {kind}, not a weights file")
    if path.stat().st_size == 0:
        raise ValueError(f"weights file {path} is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        hidden = state["net.0.weight"].shape[0]
        policy = Policy(hidden=hidden)
        policy.load_state_dict(state)
    except Exception as err:  # a truncated file, another model's weights, not a torch file ...
        raise ValueError(f"cannot read CartPole policy weights from {path}: {type(err).__name__}") from None
    return policy.eval()


# ---------------------------------------------------------------------------------------------
# The math of REINFORCE
# ---------------------------------------------------------------------------------------------
def discounted_returns(rewards, gamma: float) -> torch.Tensor:
    """Reward-to-go G_t = r_t + gamma * G_{t+1}, with G_T = 0 after the last step (Sutton & Barto eq. 3.9).

    Action a_t only influences rewards from t on, so it is weighted by what followed it, not by the
    whole episode's return: same expected gradient, less variance.
    """
    returns = torch.zeros(len(rewards), dtype=torch.float32)
    future = 0.0
    for t in reversed(range(len(rewards))):
        future = float(rewards[t]) + gamma * future
        returns[t] = future
    return returns


def standardize(returns: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(G - mean) / std. Subtracting the mean is a baseline b: E[grad log pi(a|s) * b] = 0, so the
    gradient stays unbiased (up to the per-episode estimate of b) while its variance drops; dividing
    by the std keeps the step size the same whether episodes last 10 or 500 steps."""
    if len(returns) < 2:
        return returns - returns.mean()
    return (returns - returns.mean()) / (returns.std() + eps)


def reinforce_loss(log_probs: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Minus the policy-gradient objective: -sum_t log pi(a_t|s_t) * G_t. Its gradient is the
    REINFORCE estimator of -grad J(theta) (Williams 1992; Sutton & Barto eq. 13.8)."""
    return -(log_probs * returns).sum()


# ---------------------------------------------------------------------------------------------
# Rollouts and evaluation
# ---------------------------------------------------------------------------------------------
def run_episode(env: gym.Env, policy: Policy, seed=None, greedy: bool = False):
    """Play one episode; return (log-probs of the actions taken, rewards)."""
    obs, _ = env.reset(seed=seed)
    log_probs, rewards = [], []
    done = False
    while not done:
        action, log_prob = policy.act(obs, greedy)
        obs, reward, terminated, truncated, _ = env.step(action)
        log_probs.append(log_prob)
        rewards.append(reward)
        done = terminated or truncated
    return torch.stack(log_probs), rewards


@torch.no_grad()
def evaluate(policy: Policy, episodes: int, seed: int, greedy: bool = True) -> list[float]:
    """Return of each of `episodes` episodes; episode i is reset with seed + i."""
    env = make_env()
    returns = [sum(run_episode(env, policy, seed=seed + i, greedy=greedy)[1]) for i in range(episodes)]
    env.close()
    return returns


# ---------------------------------------------------------------------------------------------
# Logging helpers
# ---------------------------------------------------------------------------------------------
def plot_learning_curve(rows: list[dict], args: Args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = [r["episode"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(episodes, [r["return"] for r in rows], lw=0.6, alpha=0.5, label="episode return")
    ax.plot(episodes, [r["moving_avg"] for r in rows], lw=2, label=f"{args.solve_window}-episode average")
    ax.axhline(args.solve_score, color="k", ls="--", lw=1, label=f"solved ({args.solve_score:g})")
    ax.set(xlabel="episode", ylabel="return", title=f"REINFORCE on CartPole-v1 (seed {args.seed})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(args: Args) -> dict:
    """Train until the moving average reaches `solve_score` (or `max_episodes`); return a summary."""
    from torch.utils.tensorboard import SummaryWriter

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    run_dir = make_run_dir(args)
    writer = SummaryWriter(str(run_dir))
    env = make_env()
    env.action_space.seed(args.seed)
    policy = Policy(hidden=args.hidden).to(pick_device(args.device))
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)

    rows, window = [], []
    solved_at = None
    start = time.perf_counter()
    bar = tqdm(range(1, args.max_episodes + 1), desc="episodes", disable=None)
    for episode in bar:
        # Only the first reset is seeded: the env's RNG then carries on, so the run is reproducible.
        log_probs, rewards = run_episode(env, policy, seed=args.seed if episode == 1 else None)
        returns = standardize(discounted_returns(rewards, args.gamma)).to(log_probs.device)
        loss = reinforce_loss(log_probs, returns)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        ep_return = float(sum(rewards))
        window = (window + [ep_return])[-args.solve_window:]
        moving_avg = float(np.mean(window))
        row = {"episode": episode, "return": ep_return, "moving_avg": moving_avg,
               "loss": loss.item(), "seconds": time.perf_counter() - start}
        rows.append(row)
        writer.add_scalar("charts/episodic_return", ep_return, episode)
        writer.add_scalar("charts/moving_avg_return", moving_avg, episode)
        writer.add_scalar("losses/policy_loss", row["loss"], episode)
        bar.set_postfix(avg=f"{moving_avg:.1f}")
        if episode % args.log_every == 0:
            tqdm.write(f"episode {episode:5d}  return {ep_return:6.1f}  "
                       f"avg{args.solve_window} {moving_avg:6.1f}")
        if len(window) == args.solve_window and moving_avg >= args.solve_score:
            solved_at = episode
            break
    bar.close()
    train_seconds = time.perf_counter() - start
    env.close()

    # Confirm with a greedy evaluation on episodes the training never saw.
    eval_returns = evaluate(policy, args.eval_episodes, seed=args.seed + 10_000)
    summary = {"seed": args.seed, "solved_at_episode": solved_at, "train_seconds": round(train_seconds, 2),
               "greedy_eval_mean": float(np.mean(eval_returns)), "greedy_eval_episodes": args.eval_episodes,
               "run_dir": str(run_dir)}
    writer.add_scalar("eval/greedy_mean_return", summary["greedy_eval_mean"], len(rows))
    writer.close()

    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        csv_writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        csv_writer.writeheader()
        csv_writer.writerows(rows)
    plot_learning_curve(rows, args, run_dir / "learning_curve.png")
    policy.cpu()  # checkpoints hold CPU tensors, whatever trained them
    torch.save(policy.state_dict(), run_dir / "policy.pt")
    if args.save_to:
        target = Path(args.save_to)
        if target.exists():
            print(f"replacing {target} (a cartpole_reinforce checkpoint) as asked by --save-to",
                  file=sys.stderr)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(policy.state_dict(), target)

    status = f"solved at episode {solved_at}" if solved_at else f"not solved in {args.max_episodes} episodes"
    print(f"{status} ({train_seconds:.1f} s); greedy eval over {args.eval_episodes} episodes: "
          f"{summary['greedy_eval_mean']:.1f}; outputs in {run_dir}")
    return summary


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


# ---------------------------------------------------------------------------------------------
# Plumbing: the command line, and every flag checked before anything runs
# ---------------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each flag's default, except the empty and off ones."""

    def _get_help_string(self, action):
        quiet = action.default is None or action.default is False or action.default == ""
        return action.help if quiet else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the defaults in `--help`, and every error as one line `error: ...` (exit status 2)."""

    def __init__(self, description: str):
        super().__init__(description=description, formatter_class=HelpFormatter)

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def parse_args(argv=None) -> Args:
    """argparse built from the dataclass, so `--help` shows every field's help text. Every flag is checked
    here, before anything is trained: an error is one line that names the flag."""
    parser = Parser("REINFORCE on CartPole-v1.")
    for f in dataclasses.fields(Args):
        parser.add_argument("--" + f.name.replace("_", "-"), type=f.type, default=f.default,
                            help=f.metadata["help"])
    args = Args(**vars(parser.parse_args(argv)))
    for name in ("max_episodes", "eval_episodes", "solve_window", "log_every", "hidden", "threads", "lr"):
        if not 0 < getattr(args, name) < math.inf:
            parser.error(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    if not 0.0 <= args.gamma <= 1.0:
        parser.error(f"--gamma must be in [0, 1], got {args.gamma}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in 0 .. 2**32 - 1 (numpy's range), got {args.seed}")
    try:
        pick_device(args.device)
        check_outputs(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def pick_device(name: str) -> torch.device:
    """--device: auto is cuda when torch sees a GPU, else cpu; ValueError (one line) for one it cannot use."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}") from None
    if device.type == "cuda" and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {name}: torch sees no such CUDA device; pass --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    return device


def can_write_in(path: Path) -> bool:
    """Whether files can be made in the directory `path`, which may not exist yet: the nearest existing one
    of it and its parents must be a directory in which a probe directory can be made (and removed at once,
    so that the check leaves nothing behind)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return False
    try:
        tempfile.TemporaryDirectory(dir=path).cleanup()
    except OSError:
        return False
    return True


def check_outputs(args: Args) -> Path:
    """Check --out and --save-to before anything runs; return the run directory (not created yet).
    A run directory is new or empty; --save-to is a new .pt file or a checkpoint of this script (replaced).
    Anything else is never overwritten: ValueError, one line that names the flag."""
    if args.out:
        run_dir = Path(args.out)
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"--out {run_dir} exists and is not a directory; pass another --out")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise ValueError(f"--out {run_dir} exists and is not empty; "
                             "pass another --out (runs are never overwritten)")
    else:  # the first free one of runs/cartpole_reinforce_s<seed>, ...-2, ...-3
        base = run_dir = Path(f"runs/cartpole_reinforce_s{args.seed}")
        n = 2
        while run_dir.exists() and not (run_dir.is_dir() and not any(run_dir.iterdir())):
            run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    if not can_write_in(run_dir):
        raise ValueError(f"--out {run_dir} cannot be created (pass another --out)")
    if args.save_to:
        target = Path(args.save_to)
        if target.suffix != ".pt":
            raise ValueError(f"--save-to {target} must be a .pt file")
        if target.is_dir():
            raise ValueError(f"--save-to {target} is a directory; name a .pt file")
        if target.exists():
            try:
                load_policy(target)
            except ValueError:
                raise ValueError(f"--save-to {target} exists and is not a cartpole_reinforce checkpoint; "
                                 "it is never overwritten") from None
        if not can_write_in(target.parent):
            raise ValueError(f"--save-to {target} cannot be created (its folder cannot be made or written)")
    return run_dir


def make_run_dir(args: Args) -> Path:
    """Create the run directory once the outputs are checked (a failed check leaves no directory behind)."""
    run_dir = check_outputs(args)  # again: train() may be called without parse_args
    if not args.out:
        print(f"writing the run to {run_dir} (pass --out to choose another directory)", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


if __name__ == "__main__":
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    sys.exit(main())
