"""pass@k and maj@k against k for every language model of the course, and the plot grpo_lm's README shows.

    python benchmarks/lm_pass_at_k.py                      # k = 1..8 on 100 held-out problems, ~6 min a model
    python benchmarks/lm_pass_at_k.py --models sft grpo_sft --k 4 --n 20   # a quick look

Each model runs `grpo_lm/eval.py --pass-at K --n N --json` in its own process (temperature 1, a fixed seed),
so every number here is that command's. RL mostly sharpens what the starting model can already sample:
pass@1 moves toward the start's pass@k, and the plot shows how far.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SFT = ["--init-adapter", "ppo_rlhf_math/sft_adapter"]
MODELS = {  # name: (label, eval.py flags)
    "untouched": ("untouched SmolLM2-135M-Instruct", ["--no-adapter"]),
    "warmup": ("format warm-up only (GRPO step 0)", ["--adapter", "grpo_lm/warmup_adapter"]),
    "sft": ("SFT (ppo_rlhf_math)", [*SFT, "--no-adapter"]),
    "ppo": ("PPO-RLHF from SFT", [*SFT, "--adapter", "ppo_rlhf_math/ppo_adapter"]),
    "grpo_sft": ("GRPO from SFT", ["--adapter", "grpo_lm/adapter_from_sft"]),
    "grpo_r1": ("GRPO, R1-Zero style", ["--adapter", "grpo_lm/adapter"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    shipped = [name for name, (_, flags) in MODELS.items()
               if "--adapter" not in flags or (REPO / flags[flags.index("--adapter") + 1]).is_dir()]
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=shipped,
                        help="models to run (default: those whose adapter is shipped)")
    parser.add_argument("--k", type=int, default=8, help="samples per problem")
    parser.add_argument("--n", type=int, default=100, help="held-out problems")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    parser.add_argument("--plot", default="grpo_lm/pass_at_k.png", help="where the plot goes (.png)")
    args = parser.parse_args()
    if min(args.k, args.n, args.threads, args.batch_size) < 1:
        parser.error("--k, --n, --threads and --batch-size must be positive")
    if not args.plot.endswith(".png") or not Path(args.plot).absolute().parent.is_dir():
        parser.error(f"--plot {args.plot!r} must be a .png file in an existing folder")
    results = {}
    for name in args.models:
        label, flags = MODELS[name]
        command = [sys.executable, "grpo_lm/eval.py", *flags, "--pass-at", str(args.k), "--n", str(args.n),
                   "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--json"]
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: {name}: {proc.stderr.strip().splitlines()[-1]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        row = results[name]
        shown = "  ".join(f"pass@{j} {row['pass_at'][str(j)]:.3f}" for j in (1, 2, 4, 8) if j <= args.k)
        print(f"{label:34s} {shown}  maj@{args.k} {row['maj_at'][str(args.k)]:.3f}", flush=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in results.items():
        ks = [int(j) for j in row["pass_at"]]
        ax.plot(ks, list(row["pass_at"].values()), "o-", label=MODELS[name][0])
    ax.set(xlabel="k (samples at temperature 1)", ylabel="pass@k", xscale="log", ylim=(0, 1),
           title=f"pass@k on {args.n} held-out problems")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(REPO / args.plot, dpi=110)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
