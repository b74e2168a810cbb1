"""Seconds per PPO step: our ppo_rlhf_math/train.py (train_ppo) against TRL's PPOTrainer
on the same model and batch.

    python -m venv --system-site-packages /tmp/trl112 && /tmp/trl112/bin/pip install --no-deps trl==1.12.0
    python benchmarks/ppo_vs_trl.py --steps 4 --trl-python /tmp/trl112/bin/python

TRL removed its PPOTrainer in 1.13, so the TRL side runs under --trl-python: a venv that sees this
environment's packages (torch, transformers, peft) and shadows only trl with 1.12.0, the last release with
trl.experimental.ppo.

Both sides: SmolLM2-135M-Instruct in fp32 on CPU, a LoRA r=8 (alpha 16) policy on q,k,v,o,gate,up,down,
16 prompts x 1 completion per step (the same generated problems; TRL's loader shuffles them into its batches),
up to 48 new tokens at temperature 1, a k1 KL penalty of 0.05 to the reference (the policy with its adapter
disabled), GAE (gamma 1, lambda 0.95), 2 epochs x 2 minibatches of 8 at lr 2e-4, a penalty of 1 for a missing
EOS. The SFT adapter is a fresh LoRA (so the base model) and the reward models are untrained: only time is
measured. Different by design: ours reads values from a head on the policy's own backbone and its reward model
is a 0.85M-weight character transformer; TRL runs the value model and the reward model as two more full
networks and trains the value model in full (all 135M weights). Timed: ours, its seconds_per_step (sample,
score, update); TRL's loop fires on_step_end per batch but no on_step_begin, so its step is the time between
consecutive on_step_end calls (the first from on_train_begin). The first step is reported apart. Each side
runs in its own subprocess, so the peak resident memory (ru_maxrss) is its own.
"""
import importlib.metadata
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

from side_by_side import parse, problems_drawn, report, run_side, side_parser, step_seconds, step_timer

os.environ["HF_HUB_OFFLINE"] = "1"  # the model is a local directory; never wait on the hub
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ppo_rlhf_math"))
import train as rlhf  # noqa: E402  (ppo_rlhf_math/train.py)

ROLLOUT, MINIBATCH, NEW_TOKENS, LR, KL_COEF = 16, 8, 48, 2e-4, 0.05
# constants of our train.py; TRL's side gets the same
NO_EOS_PENALTY, EPOCHS, LORA_R, LORA_ALPHA = rlhf.W_NO_EOS, rlhf.PPO_EPOCHS, rlhf.LORA_R, rlhf.LORA_ALPHA
# our held-out evaluation (before step 1 and after the last) runs on one problem, outside the timed steps
EVAL_SIZE = 1
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rollout_problems(steps: int, seed: int) -> list[dict]:
    """The problems train_ppo draws in `steps` steps (its rng, held-out questions skipped),
    for TRL's dataset."""
    held = {p["question"] for p in rlhf.heldout_problems(EVAL_SIZE)}
    return problems_drawn(rlhf.make_problem, held, random.Random(seed + 2), steps * ROLLOUT)


def throwaway_models(args: rlhf.Args, tmp: Path) -> tuple[Path, Path]:
    """An SFT adapter (a fresh LoRA, equal to the base model) and an untrained reward model, saved in tmp."""
    base, _ = rlhf.load_base("")
    sft = rlhf.add_lora(base)
    sft.save_pretrained(tmp / "sft")
    rlhf.RewardModel().save(tmp / "reward")
    return tmp / "sft", tmp / "reward"


def run_ours(steps: int, seed: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        args = rlhf.parse_args(["--stage", "ppo", "--seed", str(seed), "--threads", str(threads),
                                "--ppo-steps", str(steps), "--rollout-size", str(ROLLOUT),
                                "--minibatch-size", str(MINIBATCH), "--max-new-tokens", str(NEW_TOKENS),
                                "--temperature", "1.0", "--ppo-lr", str(LR), "--kl-coef", str(KL_COEF),
                                "--eval-size", str(EVAL_SIZE), "--eval-every", str(10 ** 6),
                                "--ppo-lora-layers", "0",  # every block adapted, as on TRL's side
                                # the shipped files only pass the flag checks: train_ppo gets throwaway ones
                                "--sft-adapter", "ppo_rlhf_math/sft_adapter",
                                "--reward-dir", "ppo_rlhf_math/reward_model"])
        sft_adapter, reward_dir = throwaway_models(args, Path(tmp))
        rlhf.train_ppo(args, Path(tmp) / "run", sft_adapter, reward_dir,
                       log=lambda *a: print(*a, file=sys.stderr))
        rows = (Path(tmp) / "run" / "ppo" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, map(float, r.split(",")))) for r in rows[1:]]
    return {"step_seconds": [v["seconds_per_step"] for v in values],
            "eos_rate": 1 - statistics.mean(v["reward_no_eos"] for v in values)}


def import_trl_ppo():
    """TRL's PPOConfig and PPOTrainer, or one line saying which trl has them."""
    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as err:
        try:
            found = f"trl {importlib.metadata.version('trl')}"
        except importlib.metadata.PackageNotFoundError:
            found = "no trl"
        # the right trl, but one of its own imports is missing (pandas, datasets, ...)
        if found == "trl 1.12.0":
            raise SystemExit(f"trl 1.12.0 in {sys.executable} cannot import its PPOTrainer ({err}); "
                             f"install benchmarks/requirements.txt first (see this script's docstring)")
        raise SystemExit(f"TRL's PPOTrainer needs trl==1.12.0 (removed in 1.13), {sys.executable} "
                         f"has {found}; pass --trl-python (see this script's docstring)")
    return PPOConfig, PPOTrainer


def run_trl(steps: int, seed: int, threads: int) -> dict:
    PPOConfig, PPOTrainer = import_trl_ppo()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    policy, tokenizer = rlhf.load_base("")
    # TRL masks every pad token, and SmolLM2's pad is its EOS (also inside prompts)
    tokenizer.pad_token = "<|endoftext|>"
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    critic, reward_model = (AutoModelForSequenceClassification.from_pretrained(
        str(rlhf.default_model_dir()), num_labels=1, dtype=torch.float32) for _ in range(2))
    prompts = [rlhf.build_prompt(tokenizer, p["question"]) for p in rollout_problems(steps, seed)]
    data = Dataset.from_dict({"input_ids": [tokenizer(p, add_special_tokens=False).input_ids
                                            for p in prompts]})
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(output_dir=tmp, seed=seed, total_episodes=steps * ROLLOUT,
                           per_device_train_batch_size=ROLLOUT, gradient_accumulation_steps=1,
                           num_mini_batches=ROLLOUT // MINIBATCH, num_ppo_epochs=EPOCHS,
                           local_rollout_forward_batch_size=ROLLOUT, response_length=NEW_TOKENS,
                           temperature=1.0, stop_token="eos", missing_eos_penalty=NO_EOS_PENALTY,
                           kl_coef=KL_COEF, kl_estimator="k1", learning_rate=LR, num_sample_generations=0,
                           use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no",
                           logging_steps=1)
        timer = step_timer()
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None,
                             reward_model=reward_model, train_dataset=data, value_model=critic,
                             callbacks=[timer],
                             peft_config=LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                                    target_modules=LORA_TARGETS))
        trainer.train()
    eos = [h["val/num_eos_tokens"] for h in trainer.state.log_history if "val/num_eos_tokens" in h]
    return {"step_seconds": timer.times, "eos_rate": statistics.mean(eos) / ROLLOUT}


def main() -> None:
    parser = side_parser("Seconds per PPO step, ours vs TRL's PPOTrainer (trl 1.12).")
    parser.add_argument("--trl-python", default=sys.executable,
                        help="Python interpreter with trl==1.12.0 for the TRL side (default: this one)")
    args = parse(parser)
    if args.side:
        report((run_ours if args.side == "ours" else run_trl)(args.steps, args.seed, args.threads))
        return
    print(f"PPO step, SmolLM2-135M-Instruct + LoRA r={LORA_R}, {ROLLOUT} prompts x 1, "
          f"{NEW_TOKENS} new tokens, {EPOCHS} epochs x minibatch {MINIBATCH}, fp32 CPU, "
          f"{args.threads} thread(s), {args.steps} steps each")
    for side, python in (("ours", sys.executable), ("trl", args.trl_python)):
        r = run_side(python, __file__, side, args)
        print(f"{step_seconds(side, r)}, {r['eos_rate']:.0%} of completions end with EOS")


if __name__ == "__main__":
    main()
