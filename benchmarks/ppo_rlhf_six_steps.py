"""Six PPO steps of ppo_rlhf_math from the shipped SFT adapter and reward model, the per-step numbers as JSON.

    python benchmarks/ppo_rlhf_six_steps.py > new.json                             # this tree's train.py
    git worktree add /tmp/old <commit> && python benchmarks/ppo_rlhf_six_steps.py \
        --train /tmp/old/ppo_rlhf_math/train.py > old.json                       # the same on an older one
    python benchmarks/ppo_rlhf_six_steps.py --compare old.json new.json           # equal to 4 decimals?

A refactor of train.py that claims "no result changes" must give the same rollouts, rewards, KL and losses
step for step. The run is `train.py --stage ppo` with the defaults but for a smaller rollout (16
completions, 2 minibatches of 8), one thread and a 2-problem evaluation (greedy, so it draws no random
numbers); it reads the SFT adapter and reward model shipped beside the train.py given, and prints, last, one
JSON line: a list of {column: value rounded to 4 decimals} per step, read from the run's metrics.csv. Flags
after the script's own go to train.py (e.g. `--ppo-lora-layers 0`: the adapter on every block). About 4
minutes on one core.
"""
import argparse
import contextlib
import csv
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("score", "reward_correct", "reward_format", "reward_brevity", "reward_no_eos",
           "reward_reward_model", "reward_no_slip", "kl", "non_score_reward", "policy_loss", "value_loss",
           "clipfrac", "value_clipfrac", "approx_kl", "entropy", "grad_norm", "explained_variance",
           "response_length")


def six_steps(train_py: Path, steps: int, passed: list[str]) -> list[dict]:
    spec = importlib.util.spec_from_file_location("ppo_rlhf_math_train_checked", train_py)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    folder = train_py.parent
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        args = train.parse_args(["--stage", "ppo", "--ppo-steps", str(steps), "--rollout-size", "16",
                                 "--minibatch-size", "8", "--eval-size", "2", "--eval-every", "1000",
                                 "--threads", "1", "--sft-adapter", str(folder / "sft_adapter"),
                                 "--reward-dir", str(folder / "reward_model"), "--out", f"{tmp}/run",
                                 *passed])
        train.train(args)
        with open(Path(tmp) / "run" / "ppo" / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
    return [{"step": int(row["step"]), **{k: round(float(row[k]), 4) for k in COLUMNS if row.get(k)}}
            for row in rows]


def compare(old: Path, new: Path) -> int:
    """Prints every (step, column) whose rounded values differ; exit status 1 if any does."""
    a, b = (json.loads(path.read_text().strip().splitlines()[-1]) for path in (old, new))
    differ = [(x["step"], k, x.get(k), y.get(k)) for x, y in zip(a, b) for k in {*x, *y}
              if x.get(k) != y.get(k)]
    for step, column, x, y in sorted(differ):
        print(f"step {step} {column}: {x} against {y}")
    print(f"{len(a)} and {len(b)} steps; {len(differ)} values differ")
    return int(bool(differ) or len(a) != len(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=REPO / "ppo_rlhf_math" / "train.py",
                        help="train.py to run")
    parser.add_argument("--steps", type=int, default=6, help="PPO steps")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                        help="compare two outputs instead")
    args, passed = parser.parse_known_args()
    if args.compare:
        raise SystemExit(compare(*args.compare))
    print(json.dumps(six_steps(args.train.resolve(), args.steps, passed)))


if __name__ == "__main__":
    main()
