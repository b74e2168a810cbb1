"""What the "ours against TRL" benchmarks share: each side runs as `<script> --side NAME ...` in its own \
process
(so its peak memory is its own), prints one JSON line last, and the parent prints a line of seconds per \
step."""
import argparse
import json
import resource
import statistics
import subprocess
import sys


def side_parser(description: str) -> argparse.ArgumentParser:
    """The flags both benchmarks take, and the internal --side that runs one side in its own process."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=4,
                        help="steps per side, at least 2 (the first is reported apart)")
    parser.add_argument("--seed", type=int, default=1, help="seed of both runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per side")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    return args


def step_timer():
    """A transformers TrainerCallback whose .times are the seconds of each training step: the time between
    consecutive on_step_end calls, the first from on_train_begin (TRL's PPO loop fires no on_step_begin)."""
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], 0.0

        def on_train_begin(self, *_, **__):
            self.last = time.time()

        def on_step_end(self, *_, **__):
            now = time.time()
            self.times.append(now - self.last)
            self.last = now

    return StepTimer()


def problems_drawn(make_problem, held_questions: set[str], rng, n: int) -> list[dict]:
    """The first n problems a trainer draws from rng, held-out questions skipped (as its sample_problem does),
    so that TRL's side gets the same prompts as ours."""
    problems = []
    while len(problems) < n:
        p = make_problem(rng)
        if p["question"] not in held_questions:
            problems.append(p)
    return problems


def report(result: dict) -> None:
    """In a side's process: add its peak resident memory (ru_maxrss, MB) and print the result as the last \
line."""
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_side(python: str, script: str, side: str, args: argparse.Namespace) -> dict:
    """Run one side in a fresh interpreter and return its JSON result; exit with one line if it failed."""
    flags = ["--steps", str(args.steps), "--seed", str(args.seed), "--threads", str(args.threads)]
    proc = subprocess.run([python, script, "--side", side, *flags], capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        sys.exit(f"error: the {side} side failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_seconds(side: str, result: dict) -> str:
    """'ours:  56.9 s/step (steps 2-4; first step 84.0 s)': the first step, with its one-off costs, apart."""
    times = result["step_seconds"]
    return (f"{side:>4}: {statistics.mean(times[1:]):6.1f} s/step "
            f"(steps 2-{len(times)}; first step {times[0]:.1f} s), "
            f"peak RSS {result['peak_rss_mb']:.0f} MB")
