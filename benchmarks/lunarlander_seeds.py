"""One lunarlander_ppo configuration trained from scratch on several seeds, each judged on unseen episodes.

    python benchmarks/lunarlander_seeds.py --train-flags "--wind --total-timesteps 3000000"  # 2 at a time
    python benchmarks/lunarlander_seeds.py --train-flags "--continuous" --seeds 1 2 3 --bar 250 --bar-200 95

Each seed runs `lunarlander_ppo/train.py --seed S --threads 1 <train flags>` in its own process (`--jobs`
at a time: one per core), then `lunarlander_ppo/eval.py` on its best.pt over `--episodes` greedy episodes
from `--eval-seed` on, seeds that training never sees (its periodic evaluations use 10000-10049 and its
confirmations 20000-20099). Prints a Markdown table: training seconds (evaluations excluded) and wall
seconds of the whole run, the best periodic evaluation, and the unseen mean, min and count at 200 or more.
"""
import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "lunarlander_ppo"


def run_seed(seed: int, flags: list[str], out: Path, episodes: int, eval_seed: int) -> dict:
    """Train one seed, then evaluate its best.pt; the numbers of one table row."""
    start = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "w") as fh:
        trained = subprocess.run([sys.executable, FOLDER / "train.py", "--seed", str(seed), "--threads", "1",
                                  "--out", str(out), *flags], stdout=fh, stderr=subprocess.STDOUT)
    if trained.returncode:  # a bad --train-flags, a taken --keep dir: train.py's own one-line error
        sys.exit(f"seed {seed}: {(log.read_text().strip().splitlines() or ['train.py failed'])[-1]}")
    wall = time.perf_counter() - start
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    evals = [float(r["eval_mean_return"]) for r in rows if r["eval_mean_return"] != "nan"]
    result = subprocess.run([sys.executable, FOLDER / "eval.py", "--weights", str(out / "best.pt"),
                             "--episodes", str(episodes), "--seed", str(eval_seed), "--json"],
                            capture_output=True, text=True, check=True)
    unseen = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seed": seed, "train_seconds": float(rows[-1]["train_seconds"]), "wall_seconds": wall,
            "steps": int(rows[-1]["global_step"]), "best_eval": max(evals), **unseen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-flags", default="", help='flags for train.py, e.g. "--wind --hidden 128"')
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained at once (one torch thread each)")
    parser.add_argument("--episodes", type=int, default=100, help="unseen greedy episodes per seed")
    parser.add_argument("--eval-seed", type=int, default=424242, help="episode i is reset with this + i")
    parser.add_argument("--bar", type=float, default=200.0, help="mean return the table checks")
    parser.add_argument("--bar-200", type=int, default=0, help="episodes at 200 or more the table checks")
    parser.add_argument("--keep", default="", help="keep the run directories here (default: a temp dir)")
    args = parser.parse_args()
    if min(args.jobs, args.episodes) < 1 or args.eval_seed < 0:
        parser.error("--jobs and --episodes must be positive, --eval-seed 0 or more")
    flags = args.train_flags.split()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda seed: run_seed(seed, flags, root / f"s{seed}", args.episodes,
                                                       args.eval_seed), args.seeds))
    print(f"train.py {args.train_flags}; eval.py --episodes {args.episodes} --seed {args.eval_seed}")
    print()
    print("| seed | steps | train s | wall s | best periodic eval | unseen mean | min | at 200+ | bar |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    met = [r["mean_return"] >= args.bar and r["episodes_at_least_200"] >= args.bar_200 for r in rows]
    for r, ok in zip(rows, met):
        print(f"| {r['seed']} | {r['steps']:,} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | "
              f"{r['best_eval']:.1f} | {r['mean_return']:.1f} | {r['min_return']:.1f} | "
              f"{r['episodes_at_least_200']} | {'yes' if ok else 'no'} |")
    print(f"\nbar (mean >= {args.bar:g}, >= {args.bar_200} at 200) met on {sum(met)} of {len(rows)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
