"""Seconds per GRPO step: our grpo_lm/train.py against TRL's GRPOTrainer on the same model, prompts and settings.

    pip install -r benchmarks/requirements.txt      # trl (benchmark-only)
    python benchmarks/grpo_vs_trl.py --steps 4

Both sides: SmolLM2-135M-Instruct in fp32 on CPU with LoRA r=4 on every linear layer of the blocks, 4 prompts x
G=8 completions per step, up to 64 new tokens at temperature 1, one update per batch, the token-level (dapo)
loss, no KL, the same correctness + format rewards, and every group trained on (our --filter-groups is turned
off, because TRL has no such shortcut). Each side runs in its own subprocess, so the peak resident memory
(ru_maxrss) is its own. The first step is reported apart (it includes one-off costs).
"""
import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "grpo_lm"))
import train as grpo  # noqa: E402  (grpo_lm/train.py)

PROMPTS, G, NEW_TOKENS, LORA_R, LORA_ALPHA, LR = 4, 8, 64, 4, 8, 3e-4


def problems_in_order(steps: int, seed: int) -> list[dict]:
    """The problems our trainer draws with this seed (held-out set of 1 skipped), so both sides see the same prompts."""
    rng, held = random.Random(seed), {p["question"] for p in grpo.heldout_problems(1)}
    out = []
    while len(out) < steps * PROMPTS:
        p = grpo.make_problem(rng)
        if p["question"] not in held:
            out.append(p)
    return out


def run_ours(steps: int, seed: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = grpo.parse_args(["--steps", str(steps), "--seed", str(seed), "--threads", str(threads),
                                "--prompts-per-step", str(PROMPTS), "--num-generations", str(G),
                                "--max-completion-length", str(NEW_TOKENS), "--lora-r", str(LORA_R),
                                "--lora-alpha", str(LORA_ALPHA), "--learning-rate", str(LR), "--loss-type", "dapo",
                                "--filter-groups", "false", "--warmup-examples", "0", "--eval-size", "1",
                                "--eval-every", str(10 ** 6), "--out", f"{tmp}/run"])
        grpo.train(args)
        rows = (Path(tmp) / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, map(float, r.split(",")))) for r in rows[1:]]
    return {"step_seconds": [v["seconds_per_step"] for v in values],
            "completion_length": statistics.mean(v["completion_length"] for v in values)}


def run_trl(steps: int, seed: int, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    model, tokenizer = grpo.load_base("")
    problems = problems_in_order(steps, seed)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{p['question']}\n{grpo.INSTRUCTION}"}],
                               "answer": p["answer"]} for p in problems])

    def text(completions):
        return [c[0]["content"] if isinstance(c, list) else c for c in completions]

    def correct(completions, answer, **_):
        return grpo.correctness_reward(text(completions), answer).tolist()

    def form(completions, **_):
        return grpo.format_reward(text(completions)).tolist()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, *_, **__):
            self.start = time.time()

        def on_step_end(self, *_, **__):
            self.times.append(time.time() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=PROMPTS * G, num_generations=G,
                            gradient_accumulation_steps=1, steps_per_generation=1, max_completion_length=NEW_TOKENS,
                            temperature=1.0, top_k=0, top_p=1.0, learning_rate=LR, beta=0.0, loss_type="dapo",
                            epsilon=0.2, epsilon_high=0.28, num_iterations=1, reward_weights=[1.0, 0.2],
                            use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=1,
                            shuffle_dataset=False, seed=seed, dataloader_num_workers=0, log_completions=False)
        timer = StepTimer()
        trainer = GRPOTrainer(model=model, reward_funcs=[correct, form], args=config, train_dataset=data,
                              processing_class=tokenizer, peft_config=LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
                              callbacks=[timer])
        trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {"step_seconds": timer.times, "completion_length": statistics.mean(lengths) if lengths else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description="Seconds per GRPO step, ours vs TRL's GRPOTrainer.")
    parser.add_argument("--steps", type=int, default=4, help="steps per side (the first is reported apart)")
    parser.add_argument("--seed", type=int, default=1, help="seed of both runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per side")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)  # internal: one side per subprocess
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if args.side:
        result = (run_ours if args.side == "ours" else run_trl)(args.steps, args.seed, args.threads)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    print(f"GRPO step, SmolLM2-135M-Instruct + LoRA r={LORA_R}, {PROMPTS} prompts x G={G}, {NEW_TOKENS} new tokens, "
          f"fp32 CPU, {args.threads} thread(s), {args.steps} steps each")
    for side in ("ours", "trl"):
        proc = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(args.steps), "--seed", str(args.seed),
                               "--threads", str(args.threads)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: the {side} side failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        later = r["step_seconds"][1:]
        print(f"{side:>4}: {statistics.mean(later):6.1f} s/step (steps 2-{args.steps}; first step {r['step_seconds'][0]:.1f} s), "
              f"mean completion {r['completion_length']:.1f} tokens, peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
