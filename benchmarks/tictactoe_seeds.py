"""Games and wall seconds for Tic-Tac-Toe self-play to become unexploitable, seeds 0, 1, 2 from scratch.

    python benchmarks/tictactoe_seeds.py            # prints a Markdown table (a few minutes)
    python benchmarks/tictactoe_seeds.py --train-flags "--random-opponent-share 0 --games 400000"   \
# an ablation

Each seed runs `tictactoe_selfplay/train.py` with its default flags, which stop training at the first
evaluation with zero losing lines (as X and as O) and exact win rates against a random player of at
least 0.97 as X and 0.85 as O. The saved checkpoint is then checked again from its file here: the
exhaustive count of losing lines and the exact win rates against the random player.
"""
import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_train():
    spec = importlib.util.spec_from_file_location("tictactoe_train", REPO / "tictactoe_selfplay" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-flags", default="",
                        help="extra flags for train.py, e.g. \"--mirror-share 0\"")
    args = parser.parse_args()
    train = load_train()

    print("| seed | games | wall seconds | losing lines (X + O) | win vs random as X (exact) "
          "| win vs random as O (exact) |")
    print("| --- | --- | --- | --- | --- | --- |")
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # keep the table clean
                run_args = train.parse_args(["--seed", str(seed), "--out", f"{tmp}/s{seed}",
                                             *args.train_flags.split()])
                summary = train.train(run_args)
            seconds.append(time.perf_counter() - start)
            move = train.greedy_policy(train.load_network(Path(summary["run_dir"]) / "best.pt")).__getitem__
            lines = [train.exhaustive_losing_lines(move, player) for player in (1, -1)]
            wins = [train.outcome_rates(move, player, train.free_cells)["win"] for player in (1, -1)]
            games = summary["best"]["games"] if summary["stopped"] else f"{run_args.games} (budget spent)"
            print(f"| {seed} | {games} | {seconds[-1]:.0f} | {lines[0]} + {lines[1]} | "
                  f"{wins[0]:.3f} | {wins[1]:.3f} |", flush=True)
    print(f"\nslowest seed: {max(seconds):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
