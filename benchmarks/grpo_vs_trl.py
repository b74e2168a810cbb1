"""Seconds per GRPO step: our grpo_lm/train.py against TRL's GRPOTrainer
on the same model, prompts and settings.

    pip install -r benchmarks/requirements.txt      # trl (benchmark-only)
    python benchmarks/grpo_vs_trl.py --steps 4

Both sides: SmolLM2-135M-Instruct in fp32 on CPU with LoRA r=4 on every linear layer of the blocks,
4 prompts x G=8 completions per step, up to 64 new tokens at temperature 1, one update per batch, the
token-level (dapo) loss, no KL, the same correctness + format rewards, and every group trained on (our
--filter-groups is turned off, because TRL has no such shortcut). Each side runs in its own subprocess, so the
peak resident memory (ru_maxrss) is its own. The first step is reported apart (it includes one-off costs).
"""
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

from side_by_side import parse, problems_drawn, report, run_side, side_parser, step_seconds, step_timer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "grpo_lm"))
import train as grpo  # noqa: E402  (grpo_lm/train.py)

PROMPTS, G, NEW_TOKENS, LORA_R, LORA_ALPHA, LR = 4, 8, 64, 4, 8, 3e-4  # our train.py: alpha = 2 r


def problems_in_order(steps: int, seed: int) -> list[dict]:
    """The problems our trainer draws with this seed (held-out set of 1 skipped), so both sides see
    the same prompts."""
    return problems_drawn(grpo.make_problem, {p["question"] for p in grpo.heldout_problems(1)},
                          random.Random(seed), steps * PROMPTS)


def run_ours(steps: int, seed: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = grpo.parse_args(["--steps", str(steps), "--seed", str(seed), "--threads", str(threads),
                                "--prompts-per-step", str(PROMPTS), "--num-generations", str(G),
                                "--max-completion-length", str(NEW_TOKENS), "--lora-r", str(LORA_R),
                                "--learning-rate", str(LR), "--loss-type", "dapo",
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
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    model, tokenizer = grpo.load_base("")
    problems = problems_in_order(steps, seed)
    data = Dataset.from_list([{"prompt": [{"role": "user",
                                           "content": f"{p['question']}\n{grpo.INSTRUCTION}"}],
                               "answer": p["answer"]} for p in problems])

    def text(completions):
        return [c[0]["content"] if isinstance(c, list) else c for c in completions]

    def correct(completions, answer, **_):
        return grpo.correctness_reward(text(completions), answer).tolist()

    def form(completions, **_):
        return grpo.format_reward(text(completions)).tolist()

    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=PROMPTS * G,
                            num_generations=G, gradient_accumulation_steps=1, steps_per_generation=1,
                            max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0,
                            learning_rate=LR, beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
                            num_iterations=1, reward_weights=[1.0, 0.2], use_cpu=True, bf16=False, fp16=False,
                            report_to="none", save_strategy="no", logging_steps=1, shuffle_dataset=False,
                            seed=seed, dataloader_num_workers=0, log_completions=False)
        timer = step_timer()
        trainer = GRPOTrainer(model=model, reward_funcs=[correct, form], args=config, train_dataset=data,
                              processing_class=tokenizer,
                              peft_config=LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"]),
                              callbacks=[timer])
        trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history
               if "completions/mean_length" in h]
    return {"step_seconds": timer.times,
            "completion_length": statistics.mean(lengths) if lengths else float("nan")}


def main() -> None:
    parser = side_parser("Seconds per GRPO step and peak memory, ours vs TRL's GRPOTrainer.")
    parser.add_argument("--json", action="store_true", help="end with one JSON line: seconds per step "
                                                            "(steps 2..) and peak RSS in GB of each side")
    args = parse(parser)
    if args.side:
        report((run_ours if args.side == "ours" else run_trl)(args.steps, args.seed, args.threads))
        return
    print(f"GRPO step, SmolLM2-135M-Instruct + LoRA r={LORA_R}, {PROMPTS} prompts x G={G}, "
          f"{NEW_TOKENS} new tokens, fp32 CPU, {args.threads} thread(s), {args.steps} steps each")
    summary = {}
    for side in ("ours", "trl"):
        r = run_side(sys.executable, __file__, side, args)
        print(f"{step_seconds(side, r)}, mean completion {r['completion_length']:.1f} tokens", flush=True)
        summary[side] = {"seconds_per_step": round(statistics.mean(r["step_seconds"][1:]), 1),
                         "peak_rss_gb": round(r["peak_rss_mb"] / 1024, 2)}
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
