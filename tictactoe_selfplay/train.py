"""Actor-critic self-play on Tic-Tac-Toe: an agent that never loses, learnt from games against itself.

    python tictactoe_selfplay/train.py                   # about a minute; writes runs/tictactoe_s0/
    python tictactoe_selfplay/train.py --seed 2 --save-to tictactoe_selfplay/agent.pt

The environment is written from scratch with the Gymnasium Env API. In every batch of games the
learner plays itself (both sides learn), frozen snapshots of itself from a pool refreshed every
`snapshot_every` updates (it learns the side it plays, X or O), and, in a small share of games, a
uniformly random player, so that it learns to punish the odd moves a person makes. Each update is an
advantage actor-critic step on the batch: the advantage of a move is its discounted final result minus
the critic's estimate V(s). Training stops as soon as the exhaustive check finds no losing line, as X
or as O, and the greedy agent wins often enough against a random player (`--stop-win-x/o`).

Papers: Mnih et al., "Asynchronous Methods for Deep Reinforcement Learning" (A3C/A2C), 2016;
the snapshot pool follows Bansal et al., "Emergent Complexity via Multi-Agent Competition", 2018.
Play against the result: python tictactoe_selfplay/play.py
"""
import argparse
import copy
import csv
import dataclasses
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

FOLDER = Path(__file__).resolve().parent
SHIPPED_WEIGHTS = FOLDER / "agent.pt"
LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


@dataclass
class Args:
    seed: int = field(default=0, metadata={"help": "seed for python, numpy, torch and the envs"})
    games: int = field(default=1_000_000, metadata={
        "help": "training games at most, rounded to whole batches (training usually stops long before)"})
    games_per_update: int = field(default=64, metadata={"help": "games in each actor-critic batch"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    gamma: float = field(default=0.95, metadata={
        "help": "discount per own move: a quicker win is worth more"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy bonus coefficient"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient"})
    snapshot_every: int = field(default=20, metadata={
        "help": "updates between snapshots added to the opponent pool"})
    pool_size: int = field(default=20, metadata={"help": "frozen snapshots kept in the opponent pool"})
    mirror_share: float = field(default=0.4, metadata={
        "help": "share of games of the current network against itself (both sides learn)"})
    random_opponent_share: float = field(default=0.2, metadata={
        "help": "share of games against a uniformly random player (the rest: snapshots)"})
    opponent_epsilon: float = field(default=0.3, metadata={
        "help": "snapshots play their greedy move, or a random one with this probability"})
    max_opening_moves: int = field(default=4, metadata={
        "help": "each game opens with 0..N random moves nobody learns from (at most 4: no game ends)"})
    hidden: int = field(default=128, metadata={"help": "width of the two hidden layers"})
    eval_every: int = field(default=25, metadata={
        "help": "updates between evaluations (exact, over the whole game tree)"})
    stop_win_x: float = field(default=0.97, metadata={
        "help": "stop once there are no losing lines and the win rate vs random as X is at least this"})
    stop_win_o: float = field(default=0.85, metadata={
        "help": "... and as O at least this (the best never-losing policy reaches 0.995 and 0.916)"})
    out: str = field(default="", metadata={
        "help": "run directory, new or empty (default: the first free one of runs/tictactoe_s<seed>, "
                "-2, -3 ...)"})
    save_to: str = field(default="", metadata={
        "help": "also copy the best checkpoint to this .pt file: a new one, or a checkpoint of this script "
                "to replace (e.g. tictactoe_selfplay/agent.pt)"})
    device: str = field(default="auto", metadata={
        "help": "cpu, cuda, cuda:N or auto (cuda when torch sees a GPU; this tiny network is fast on cpu)"})


# ---------------------------------------------------------------------------------------------
# The game, with the Gymnasium Env API
# ---------------------------------------------------------------------------------------------
def winner(board) -> int:
    """1 if X has three in a row, -1 if O has, 0 otherwise."""
    for a, b, c in LINES:
        if board[a] != 0 and board[a] == board[b] == board[c]:
            return int(board[a])
    return 0


def to_move(board) -> int:
    """X (1) moves when the counts are equal, O (-1) otherwise."""
    return 1 if sum(1 for v in board if v == 1) == sum(1 for v in board if v == -1) else -1


class TicTacToeEnv(gym.Env):
    """Both players act through the same env, taking turns. The observation is the board from the
    mover's point of view (own stones +1, the opponent's -1), so one policy plays either side; the
    legal moves are in info["action_mask"]. The reward goes to the player who just moved: +1 for a win,
    0 otherwise (a move can never lose on the spot); the loser's -1 is assigned by the training loop."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1, 1, shape=(9,), dtype=np.int8)
        self.action_space = gym.spaces.Discrete(9)
        self.board = np.zeros(9, dtype=np.int8)
        self.player, self.done = 1, False

    def _obs(self):
        return self.board * self.player, {"action_mask": self.board == 0, "player": self.player}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.board = np.zeros(9, dtype=np.int8)
        self.player, self.done = 1, False
        return self._obs()

    def step(self, action):
        action = int(action)
        if self.done or not 0 <= action < 9 or self.board[action] != 0:
            raise ValueError(f"illegal move {action} on board {self.board.tolist()}")
        self.board[action] = self.player
        won = winner(self.board) == self.player
        self.done = won or not (self.board == 0).any()
        self.player = -self.player
        obs, info = self._obs()
        return obs, 1.0 if won else 0.0, self.done, False, info

    def render(self):
        marks = {1: "X", -1: "O", 0: "."}
        return "\n".join(" ".join(marks[int(v)] for v in self.board[r * 3:r * 3 + 3]) for r in range(3))


# ---------------------------------------------------------------------------------------------
# The actor-critic network
# ---------------------------------------------------------------------------------------------
def masked_log_policy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) over the legal moves only: illegal logits become -inf, so they get probability 0
    and no gradient, and the softmax renormalises over the legal cells. (B, 9), (B, 9) bool -> (B, 9)."""
    return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


class ActorCritic(nn.Module):
    """Shared body, a policy head over the 9 cells (illegal cells masked out) and a value head."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(18, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.policy = nn.Linear(hidden, 9)
        self.value = nn.Linear(hidden, 1)

    def forward(self, obs: torch.Tensor, mask: torch.Tensor):
        """obs (B, 9) from the mover's view, mask (B, 9) bool -> masked log-probs (B, 9), values (B,)."""
        obs, mask = obs.to(self.value.weight.device), mask.to(self.value.weight.device)  # from the CPU
        planes = torch.cat([(obs == 1).float(), (obs == -1).float()], dim=-1)  # (B, 18): mine, theirs
        h = self.body(planes)  # (B, hidden)
        return masked_log_policy(self.policy(h), mask), self.value(h).squeeze(-1)


def load_network(path) -> ActorCritic:
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
        net = ActorCritic(hidden=state["body.0.weight"].shape[0])
        net.load_state_dict(state)
    except Exception as err:
        raise ValueError(f"cannot read Tic-Tac-Toe weights from {path}: {type(err).__name__}") from None
    return net.eval()


# ---------------------------------------------------------------------------------------------
# The math of advantage actor-critic
# ---------------------------------------------------------------------------------------------
def move_returns(result: float, num_moves: int, gamma: float) -> torch.Tensor:
    """Return of each of a player's moves in a game with final result +1/0/-1 for that player:
    G_k = gamma^(n-1-k) * result for the k-th of its n moves (the only reward comes at the end)."""
    return result * gamma ** torch.arange(num_moves - 1, -1, -1, dtype=torch.float32)


def masked_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """H = -sum_a pi(a) log pi(a) over the legal moves (illegal ones have log pi = -inf, pi = 0). (B,)"""
    return -(log_probs.exp() * log_probs.masked_fill(torch.isinf(log_probs), 0.0)).sum(-1)


def actor_critic_loss(log_probs, values, returns, entropy, vf_coef: float, ent_coef: float):
    """A2C loss: -log pi(a|s) * (G - V(s)) with the advantage held constant, + vf_coef * (G - V)^2,
    - ent_coef * entropy. The critic's V(s) is the baseline that cuts the gradient's variance."""
    advantages = (returns - values).detach()
    policy_loss = -(log_probs * advantages).mean()
    value_loss = (returns - values).pow(2).mean()
    return policy_loss + vf_coef * value_loss - ent_coef * entropy.mean(), policy_loss, value_loss


# ---------------------------------------------------------------------------------------------
# The whole game tree: perfect play, the greedy agent, exact evaluation
# ---------------------------------------------------------------------------------------------
def play(board: tuple, cell: int) -> tuple:
    return board[:cell] + (to_move(board),) + board[cell + 1:]


def free_cells(board: tuple) -> list[int]:
    return [i for i in range(9) if board[i] == 0]


@lru_cache(maxsize=None)
def positions() -> tuple:
    """Every position reachable in a game that is not over yet (4520 of them)."""
    seen, stack = set(), [(0,) * 9]
    while stack:
        board = stack.pop()
        if board in seen or winner(board) != 0 or 0 not in board:
            continue
        seen.add(board)
        stack += [play(board, i) for i in free_cells(board)]
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def minimax_value(board: tuple) -> int:
    """Game value for the player to move under perfect play: +1 win, 0 draw, -1 loss (negamax)."""
    if winner(board) != 0:
        return -1  # the previous player just completed a line
    if 0 not in board:
        return 0
    return max(-minimax_value(play(board, i)) for i in free_cells(board))


def minimax_moves(board: tuple) -> list[int]:
    """All optimal moves of the player to move: the perfect opponent picks one of them at random."""
    scores = {i: -minimax_value(play(board, i)) for i in free_cells(board)}
    return [i for i, s in scores.items() if s == max(scores.values())]


@torch.no_grad()
def greedy_policy(net: ActorCritic) -> dict:
    """board (tuple of 9 in {1, -1, 0}) -> the network's most probable legal move, for every position
    at once (one forward pass). Ties go to the lowest cell: the agent is deterministic."""
    boards = torch.tensor(positions(), dtype=torch.int8)  # (4520, 9)
    movers = torch.where((boards == 1).sum(1) == (boards == -1).sum(1), 1, -1).to(torch.int8)
    log_p, _ = net(boards * movers[:, None], boards == 0)
    return dict(zip(positions(), log_p.argmax(-1).tolist()))


def exhaustive_losing_lines(agent_move_fn, agent_plays: int) -> int:
    """Number of games the agent loses, over every possible sequence of opponent moves, when it plays X
    (agent_plays=1) or O (-1). `agent_move_fn(board tuple) -> cell` must be deterministic. An illegal
    move counts as a losing line. Memoised per position: the count below a position depends on it only."""

    @lru_cache(maxsize=None)
    def count(board: tuple) -> int:
        if winner(board) != 0:
            return int(winner(board) == -agent_plays)
        if 0 not in board:
            return 0
        if to_move(board) == agent_plays:
            cell = agent_move_fn(board)
            return count(play(board, cell)) if cell in free_cells(board) else 1
        return sum(count(play(board, i)) for i in free_cells(board))

    return count((0,) * 9)


def outcome_rates(agent_move_fn, agent_plays: int, opponent_moves) -> dict:
    """Exact win/draw/loss probabilities of the agent against an opponent that picks uniformly among
    `opponent_moves(board)`: `free_cells` is the random player, `minimax_moves` the perfect one."""

    @lru_cache(maxsize=None)
    def probs(board: tuple) -> np.ndarray:  # (win, draw, loss)
        if winner(board) != 0 or 0 not in board:
            return np.eye(3)[1 - winner(board) * agent_plays]
        if to_move(board) == agent_plays:
            return probs(play(board, agent_move_fn(board)))
        return np.mean([probs(play(board, i)) for i in opponent_moves(board)], axis=0)

    return dict(zip(("win", "draw", "loss"), probs((0,) * 9).tolist()))


def evaluate(agent_move_fn) -> dict:
    """Everything logged about an agent: exact rates against random and minimax, and losing lines."""
    stats = {}
    for side, player in (("x", 1), ("o", -1)):
        for name, opponent in (("random", free_cells), ("minimax", minimax_moves)):
            for outcome, rate in outcome_rates(agent_move_fn, player, opponent).items():
                stats[f"{name}_{side}_{outcome}"] = rate
        stats[f"losing_lines_{side}"] = exhaustive_losing_lines(agent_move_fn, player)
    stats["losing_lines"] = stats["losing_lines_x"] + stats["losing_lines_o"]
    return stats


# ---------------------------------------------------------------------------------------------
# Self-play: a batch of games played in lockstep, one forward pass per player and ply
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def choose_moves(net, obs: np.ndarray, masks: np.ndarray, sample: bool, epsilon: float) -> list[int]:
    """Moves for a batch of positions (B, 9): uniform over the legal cells if `net` is None (the random
    player), sampled from pi(.|s) if `sample` (the learner), else greedy with probability 1 - epsilon
    (a frozen snapshot: mostly its best move, sometimes a random one, so the learner sees variety)."""
    masks_t = torch.as_tensor(masks)
    uniform = torch.multinomial(masks_t.float(), 1).squeeze(1)  # (B,)
    if net is None:
        return uniform.tolist()
    log_p, _ = net(torch.as_tensor(obs), masks_t)  # (B, 9)
    if sample:
        return torch.multinomial(log_p.exp(), 1).squeeze(1).tolist()
    explore = torch.rand(len(obs)) < epsilon
    return torch.where(explore, uniform, log_p.argmax(-1).cpu()).tolist()


def play_batch(envs: list, learner: ActorCritic, seats: list, openings: list, epsilon: float):
    """Play one game in each env, all in lockstep, with one forward pass per kind of player and ply.
    seats[i] = {1: controller of X, -1: controller of O}, a controller being `learner`, a snapshot or
    None (random). Each game opens with openings[i] random moves that nobody learns from ("exploring
    starts", Sutton & Barto 5.3): the learner also meets the odd positions a person can force.
    Returns, per game, the learner's moves {player: (observations, masks, actions)} and the winner."""
    obs, masks, players = [], [], []
    for env, n in zip(envs, openings):
        o, info = env.reset()
        for _ in range(n):
            o, _, _, _, info = env.step(env.np_random.choice(np.flatnonzero(info["action_mask"])))
        obs.append(o)
        masks.append(info["action_mask"])
        players.append(info["player"])
    records = [{p: ([], [], []) for p, c in seat.items() if c is learner} for seat in seats]
    live = list(range(len(envs)))
    while live:
        groups = {}  # games whose mover has the same controller share one forward pass
        for i in live:
            groups.setdefault(id(seats[i][players[i]]), []).append(i)
        actions = {}
        for idx in groups.values():
            controller = seats[idx[0]][players[idx[0]]]
            moves = choose_moves(controller, np.stack([obs[i] for i in idx]),
                                 np.stack([masks[i] for i in idx]),
                                 sample=controller is learner, epsilon=epsilon)
            actions.update(zip(idx, moves))
        for i in live:
            if seats[i][players[i]] is learner:
                for store, item in zip(records[i][players[i]], (obs[i], masks[i], actions[i])):
                    store.append(item)
            obs[i], _, _, _, info = envs[i].step(actions[i])
            masks[i], players[i] = info["action_mask"], info["player"]
        live = [i for i in live if not envs[i].done]
    return records, [winner(env.board) for env in envs]


def draw_seats(learner, pool: list, args: Args, rng: random.Random) -> dict:
    """Who plays X and O in one training game: the learner against itself, a snapshot, or random."""
    draw = rng.random()
    if draw < args.mirror_share:
        return {1: learner, -1: learner}  # both sides learn, each from the other's mistakes
    opponent = None if draw < args.mirror_share + args.random_opponent_share else rng.choice(pool)
    side = rng.choice((1, -1))
    return {side: learner, -side: opponent}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def plot_learning_curve(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = [r["games"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("random_x_win", "win vs random as X"), ("random_o_win", "win vs random as O"),
                       ("minimax_x_loss", "loss vs minimax as X"),
                       ("minimax_o_loss", "loss vs minimax as O")):
        ax1.plot(games, [r[key] for r in rows], label=label)
    ax1.set(xlabel="training games", ylabel="rate (exact)", ylim=(-0.02, 1.02), title=title)
    ax1.legend(fontsize=7)
    ax2.plot(games, [r["losing_lines"] for r in rows], color="C3")
    ax2.set(xlabel="training games", ylabel="losing lines (exhaustive)", yscale="symlog",
            title="exploitability")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(args: Args) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    torch.set_num_threads(1)  # a tiny network: one thread is fastest, and the machine is shared
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    run_dir = make_run_dir(args)
    writer = SummaryWriter(str(run_dir))
    envs = [TicTacToeEnv() for _ in range(args.games_per_update)]
    for i, env in enumerate(envs):
        env.reset(seed=args.seed * 10_000 + i)  # seeds env.np_random, which draws the opening moves
    net = ActorCritic(args.hidden).to(pick_device(args.device))
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    pool = [copy.deepcopy(net).eval()]

    rows, best, first_zero, stopped = [], None, None, False
    start = time.perf_counter()
    num_updates = max(1, args.games // args.games_per_update)
    bar = tqdm(range(1, num_updates + 1), desc="updates", disable=None)
    for update in bar:
        # 1. A batch of games: the learner against itself, its frozen snapshots, or the random player.
        seats = [draw_seats(net, pool, args, rng) for _ in envs]
        openings = [rng.randint(0, args.max_opening_moves) for _ in envs]
        records, winners = play_batch(envs, net, seats, openings, args.opponent_epsilon)
        obs, masks, actions, returns = [], [], [], []
        for moves, won in zip(records, winners):
            for player, (o, m, a) in moves.items():
                obs += o
                masks += m
                actions += a
                returns.append(move_returns(float(won * player), len(a), args.gamma))

        # 2. One advantage actor-critic step on all the learner's moves of the batch.
        log_p, values = net(torch.as_tensor(np.array(obs)), torch.as_tensor(np.array(masks)))  # (N, 9), (N,)
        taken = log_p.gather(1, torch.as_tensor(actions, device=log_p.device).unsqueeze(1)).squeeze(1)  # (N,)
        entropy = masked_entropy(log_p)
        returns = torch.cat(returns).to(values.device)  # (N,)
        loss, policy_loss, value_loss = actor_critic_loss(taken, values, returns, entropy, args.vf_coef,
                                                          args.ent_coef)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        # 3. Refresh the pool of frozen opponents.
        if update % args.snapshot_every == 0:
            pool = (pool + [copy.deepcopy(net).eval()])[-args.pool_size:]

        # 4. Evaluate exactly: rates against random and minimax, and the exhaustive losing-line count.
        if update % args.eval_every == 0 or update == num_updates:
            stats = evaluate(greedy_policy(net).__getitem__)
            row = {"update": update, "games": update * args.games_per_update,
                   "seconds": round(time.perf_counter() - start, 2),
                   "policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                   "entropy": entropy.mean().item(), **stats}
            rows.append(row)
            for key, value in row.items():
                if key not in ("update", "games"):
                    writer.add_scalar(("losses/" if key in ("policy_loss", "value_loss", "entropy")
                                       else "eval/") + key, value, row["games"])
            stopped = (stats["losing_lines"] == 0 and stats["random_x_win"] >= args.stop_win_x
                       and stats["random_o_win"] >= args.stop_win_o)
            score = (-stats["losing_lines"], stopped, stats["random_x_win"] + stats["random_o_win"])
            if best is None or score > best[0]:
                best = (score, row)
                torch.save(net.state_dict(), run_dir / "best.pt")
            if stats["losing_lines"] == 0 and first_zero is None:
                first_zero = row
            bar.set_postfix(lines=stats["losing_lines"], rx=f"{stats['random_x_win']:.2f}",
                            ro=f"{stats['random_o_win']:.2f}")
            tqdm.write(f"games {row['games']:7d}  {row['seconds']:6.1f}s  "
                       f"losing lines {stats['losing_lines']:4d}  "
                       f"vs random: X win {stats['random_x_win']:.3f} O win {stats['random_o_win']:.3f}  "
                       f"vs minimax: X loss {stats['minimax_x_loss']:.2f} "
                       f"O loss {stats['minimax_o_loss']:.2f}")
            if stopped:
                break
    bar.close()
    writer.close()

    torch.save(net.state_dict(), run_dir / "final.pt")
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        csv_writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        csv_writer.writeheader()
        csv_writer.writerows(rows)
    plot_learning_curve(rows, run_dir / "learning_curve.png", f"self-play actor-critic (seed {args.seed})")
    if args.save_to:
        target = Path(args.save_to)
        if target.exists():
            print(f"replacing {target} (a tictactoe_selfplay checkpoint) as asked by --save-to",
                  file=sys.stderr)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((run_dir / "best.pt").read_bytes())
    b = best[1]
    print(("stopped: " if stopped else "budget spent: ")
          + f"best checkpoint has {b['losing_lines']} losing lines, wins "
          f"{b['random_x_win']:.3f} as X and {b['random_o_win']:.3f} as O vs random "
          f"(after {b['games']} games, {b['seconds']:.0f} s); "
          + (f"first zero losing lines after {first_zero['games']} games; " if first_zero
             else "never unexploitable; ")
          + f"outputs in {run_dir}")
    return {"run_dir": str(run_dir), "best": b, "first_zero": first_zero, "stopped": stopped}


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
    parser = Parser("Actor-critic self-play on Tic-Tac-Toe.")
    for f in dataclasses.fields(Args):
        parser.add_argument("--" + f.name.replace("_", "-"), type=f.type, default=f.default,
                            help=f.metadata["help"])
    args = Args(**vars(parser.parse_args(argv)))
    for name in ("games", "games_per_update", "snapshot_every", "pool_size", "hidden", "eval_every", "lr"):
        if not 0 < getattr(args, name) < math.inf:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.gamma <= 1:
        parser.error("--gamma must be in (0, 1]")
    if not 0 <= args.max_opening_moves <= 4:
        parser.error("--max-opening-moves must be in 0..4")
    shares = (args.mirror_share, args.random_opponent_share)
    if min(shares) < 0 or sum(shares) > 1:
        parser.error("--mirror-share and --random-opponent-share must be >= 0 and add up to at most 1")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in 0 .. 2**32 - 1 (numpy's range), got {args.seed}")
    try:
        pick_device(args.device)
        check_outputs(args)
    except ValueError as err:
        parser.error(str(err))
    batch = args.games_per_update
    if args.games % batch:
        updates = max(1, args.games // batch)
        print(f"--games {args.games} is not a whole number of batches of {batch} games: "
              f"training for {updates} x {batch} = {updates * batch} games at most", file=sys.stderr)
    return args


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
    else:  # the first free one of runs/tictactoe_s<seed>, ...-2, ...-3
        base = run_dir = Path(f"runs/tictactoe_s{args.seed}")
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
                load_network(target)
            except ValueError:
                raise ValueError(f"--save-to {target} exists and is not a tictactoe_selfplay checkpoint; "
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
    sys.exit(main())
