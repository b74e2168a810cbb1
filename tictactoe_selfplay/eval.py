"""Evaluate the Tic-Tac-Toe agent: games against random and minimax players, or an exhaustive check.

    python tictactoe_selfplay/eval.py --games 1000 --json     # win/draw/loss rates as X and as O
    python tictactoe_selfplay/eval.py --exhaustive --json     # losing lines over every opponent sequence

Also a small API for other programs:

    from eval import load_agent
    agent = load_agent()              # the shipped weights, or load_agent("path/to/agent.pt")
    agent.move([1, 0, 0, 0, -1, 0, 0, 0, 0])   # -> a legal cell 0-8 for the player to move (here X)
"""
import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import (SHIPPED_WEIGHTS, Parser, exhaustive_losing_lines, free_cells, greedy_policy,  # noqa: E402
                   load_network, minimax_moves, outcome_rates, play, to_move, winner)


class Agent:
    """The trained network behind a board -> cell interface: its most probable legal move (ties to the
    lowest cell), looked up in a table computed once for every position, so it is deterministic."""

    def __init__(self, net):
        self._table = greedy_policy(net)

    def move(self, board) -> int:
        """`board`: 9 ints in reading order, 1 = X, -1 = O, 0 = empty; X moves when the counts are equal.
        Returns the agent's cell (0-8) for the player to move."""
        board = tuple(int(v) for v in board)
        if board not in self._table:
            raise ValueError(f"not a position of an unfinished game (9 values in 1/0/-1, X first): "
                             f"{list(board)}")
        return self._table[board]


def load_agent(weights_path=None) -> Agent:
    """Load the shipped agent (or the weights at `weights_path`); ValueError if they cannot be read."""
    return Agent(load_network(weights_path or SHIPPED_WEIGHTS))


def play_game(x_move, o_move) -> int:
    """One game between two functions board -> cell; the winner (1 X, -1 O) or 0 for a draw.
    An illegal move loses on the spot."""
    board = (0,) * 9
    while winner(board) == 0 and 0 in board:
        player = to_move(board)
        cell = (x_move if player == 1 else o_move)(board)
        if cell not in free_cells(board):
            return -player
        board = play(board, cell)
    return winner(board)


def match_rates(agent_move, opponent_move, games: int, agent_plays: int) -> dict:
    """Win / draw / loss rates of the agent over `games` sampled games as X (1) or O (-1)."""
    pairs = (agent_move, opponent_move) if agent_plays == 1 else (opponent_move, agent_move)
    results = [play_game(*pairs) * agent_plays for _ in range(games)]  # +1 the agent won, -1 it lost
    return {"win": results.count(1) / games, "draw": results.count(0) / games,
            "loss": results.count(-1) / games}


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser("Evaluate the Tic-Tac-Toe self-play agent.")
    parser.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="state_dict to load")
    parser.add_argument("--games", type=int, default=1000, help="games per opponent and side")
    parser.add_argument("--seed", type=int, default=0, help="seed of the opponents' random choices")
    parser.add_argument("--exhaustive", action="store_true",
                        help="count losing lines over every opponent move sequence")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line, last")
    args = parser.parse_args(argv)
    if args.games <= 0:
        parser.error(f"--games must be a positive number, got {args.games}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        agent = load_agent(args.weights)
    except ValueError as err:
        print(f"error: --weights: {err}", file=sys.stderr)
        return 1
    results = {}
    if args.exhaustive:
        for side, player in (("X", 1), ("O", -1)):
            lines = exhaustive_losing_lines(agent.move, player)
            results[f"losing_lines_{side.lower()}"] = lines
            print(f"agent as {side}: {lines} losing lines against every possible opponent move sequence")
        results["losing_lines"] = results["losing_lines_x"] + results["losing_lines_o"]
        print(f"total losing lines: {results['losing_lines']}")
    else:
        rng = random.Random(args.seed)
        opponents = {"random": (lambda b: rng.choice(free_cells(b)), free_cells),
                     "minimax": (lambda b: rng.choice(minimax_moves(b)), minimax_moves)}
        print(f"{'opponent':>8}  {'agent':>5}  {'win':>6}  {'draw':>6}  {'loss':>6}  {'exact win':>9}   "
              f"({args.games} games each)")
        for name, (sampled, choices) in opponents.items():
            for side, player in (("X", 1), ("O", -1)):
                rates = match_rates(agent.move, sampled, args.games, player)
                exact = outcome_rates(agent.move, player, choices)["win"]
                results.update({f"{name}_{side.lower()}_{k}": v for k, v in rates.items()})
                results[f"{name}_{side.lower()}_win_exact"] = round(exact, 4)
                print(f"{name:>8}  {side:>5}  {rates['win']:6.1%}  {rates['draw']:6.1%}  "
                      f"{rates['loss']:6.1%}  {exact:9.1%}")
        results["games"] = args.games
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
