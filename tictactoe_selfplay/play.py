"""Play Tic-Tac-Toe against the self-play agent in the terminal.

    python tictactoe_selfplay/play.py                 # who starts is drawn at random
    python tictactoe_selfplay/play.py --first human   # you play X

Type the number of a free cell (1 is top-left, 9 bottom-right); q, Ctrl-C or Ctrl-D quits.
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval import load_agent  # noqa: E402
from train import SHIPPED_WEIGHTS, Parser, winner  # noqa: E402

MARKS = {1: "X", -1: "O"}


class Quit(Exception):
    """The player typed q, pressed Ctrl-C, or the input ended."""


def draw_board(board) -> str:
    """The board with X, O, and the number (1-9) of every free cell."""
    cells = [MARKS.get(v) or str(i + 1) for i, v in enumerate(board)]
    rows = [f" {cells[r]} | {cells[r + 1]} | {cells[r + 2]}" for r in (0, 3, 6)]
    return "\n---+---+---\n".join(rows)


def ask(input_fn, prompt: str) -> str:
    try:
        text = input_fn(prompt)
    except (EOFError, KeyboardInterrupt):
        raise Quit from None
    if text.strip().lower() in ("q", "quit", "exit"):
        raise Quit
    return text.strip()


def read_move(board, input_fn, output_fn) -> int:
    """Ask until the answer is a free cell; return its index 0-8. A bad answer never costs the turn."""
    while True:
        text = ask(input_fn, "Your move (1-9, q to quit): ")
        if not text:
            output_fn("Type the number of a free cell, 1 to 9 (or q to quit).")
        elif not text.isdecimal():  # not isdigit(): '²' is a digit, but int('²') fails
            output_fn(f"'{text}' is not a number: type a free cell, 1 to 9 (or q to quit).")
        elif not 1 <= int(text) <= 9:
            output_fn(f"There is no cell {int(text)}: the cells are numbered 1 to 9.")
        elif board[int(text) - 1] != 0:
            output_fn(f"Cell {int(text)} is taken: pick a free cell.")
        else:
            return int(text) - 1


def play_game(agent, human_first: bool, input_fn, output_fn) -> int:
    """One game; return +1 if the human won, -1 if the agent won, 0 for a draw. The board is a list of
    9 ints in reading order (1 = X, -1 = O, 0 = empty), the format of `agent.move`."""
    board = [0] * 9
    human = 1 if human_first else -1
    output_fn(f"\nYou are {MARKS[human]}, the agent is {MARKS[-human]}. "
              f"{'You start.' if human_first else 'The agent starts.'}")
    player = 1
    while winner(board) == 0 and 0 in board:
        if player == human:
            output_fn("\n" + draw_board(board))
            cell = read_move(board, input_fn, output_fn)
        else:
            cell = agent.move(board)
            output_fn(f"\nThe agent plays {cell + 1}.")
        board[cell] = player
        player = -player
    output_fn("\n" + draw_board(board))
    result = winner(board) * human
    output_fn({1: "You win!", -1: "The agent wins.", 0: "A draw."}[result])
    return result


def play_session(agent, first: str = "random", input_fn=input, output_fn=print, rng=None) -> dict:
    """Games until the player declines another or quits; return the running score."""
    rng = rng or random.Random()
    score = {"you": 0, "agent": 0, "draws": 0}
    try:
        while True:
            human_first = first == "human" or (first == "random" and rng.random() < 0.5)
            result = play_game(agent, human_first, input_fn, output_fn)
            score[{1: "you", -1: "agent", 0: "draws"}[result]] += 1
            output_fn(f"Score: you {score['you']}, agent {score['agent']}, draws {score['draws']}")
            if ask(input_fn, "Play again? [y/N] ").lower() not in ("y", "yes"):
                break
    except (Quit, KeyboardInterrupt):  # Ctrl-C is turned into Quit at a prompt, but may come at any moment
        output_fn("\nBye.")
    output_fn(f"Final score: you {score['you']}, agent {score['agent']}, draws {score['draws']}")
    return score


def main(argv=None) -> int:
    parser = Parser("Play Tic-Tac-Toe against the self-play agent.")
    parser.add_argument("--first", choices=("human", "agent", "random"), default="random",
                        help="who plays X and starts")
    parser.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="agent weights")
    args = parser.parse_args(argv)
    try:
        agent = load_agent(args.weights)
    except ValueError as err:
        print(f"error: --weights: {err}", file=sys.stderr)
        return 1
    play_session(agent, args.first)
    return 0


if __name__ == "__main__":
    sys.exit(main())
