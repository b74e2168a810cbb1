"""Smoke and unit tests of ppo_rlhf_math/ (SFT, reward model, PPO). A tiny random Llama with a character-level
tokenizer is built here, so nothing is downloaded."""
import json
import random
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_script, save_tiny_tokenizer, tiny_llama_config

train = load_script("ppo_rlhf_math")
FOLDER = REPO / "ppo_rlhf_math"


def run(script, *flags):
    return subprocess.run([sys.executable, str(FOLDER / script), *flags],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny random causal LM with a character-level tokenizer (pad == eos, as in SmolLM2)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    path = tmp_path_factory.mktemp("tiny") / "lm"
    tokenizer = save_tiny_tokenizer(path)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**tiny_llama_config(tokenizer))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_lm):
    """All three stages, one or two steps each, on the tiny model."""
    out = tiny_lm.parent / "run"
    args = train.parse_args(["--stage", "all", "--model", str(tiny_lm), "--out", str(out),
                             "--max-new-tokens", "6", "--batch-size", "4", "--eval-size", "4",
                             "--sft-examples", "8", "--rm-problems", "4", "--rm-arithmetic-steps", "2",
                             "--rm-warmup-steps", "2", "--rm-steps", "2", "--ppo-steps", "2",
                             "--rollout-size", "4", "--minibatch-size", "2", "--eval-every", "1",
                             "--ppo-lora-layers", "1", "--w-slip", "0.5"])
    return out, train.train(args)


def test_help_runs():
    for script in ("train.py", "eval.py"):
        result = run(script, "--help")
        assert result.returncode == 0 and "--stage" in result.stdout


def test_heldout_set_is_grpo_lm_s():
    grpo = load_script("grpo_lm")
    ours, theirs = train.heldout_problems(50), grpo.heldout_problems(50)
    assert [p["question"] for p in ours] == [p["question"] for p in theirs]
    assert [p["answer"] for p in ours] == [p["answer"] for p in theirs]
    assert all(train.extract_answer(p["solution"]) == p["answer"] for p in ours)  # worked solutions are right


def test_unseen_problems_use_names_and_items_no_stage_trains_on():
    evaluate = load_script("ppo_rlhf_math", "eval")
    held = {p["question"] for p in train.heldout_problems(200)}
    problems = train.distinct_problems(evaluate.UNSEEN_SEED, 100, held, evaluate.UNSEEN_NAMES,
                                       evaluate.UNSEEN_ITEMS)
    words = [p["question"] for p in problems if evaluate.problem_kind(p["question"]) == "word"]
    assert len({p["question"] for p in problems} - held) == 100 and len(words) > 10
    assert not any(name in q.split() for q in words for name in train.NAMES + train.ITEMS)
    assert all(train.extract_answer(p["solution"]) == p["answer"] for p in problems)


def test_split_solutions_step_tens_then_units():
    split = [train.split_solution(p) for p in train.distinct_problems(3, 80)]
    one_line = {"question": "What is 61 - 37?", "answer": "24", "solution": "61 - 37 = 24\n#### 24"}
    assert train.split_solution(one_line)["solution"] == "61 - 30 = 31\n31 - 7 = 24\n#### 24"
    round_tens = {"question": "What is 47 + 40?", "answer": "87", "solution": "47 + 40 = 87\n#### 87"}
    assert train.split_solution(round_tens) == round_tens  # nothing to split
    assert all(train.extract_answer(p["solution"]) == p["answer"] and train.first_slip(p["solution"]) is None
               for p in split)
    assert all(train.extract_answer(train.perturb_solution(p, random.Random(i))) != p["answer"]
               for i, p in enumerate(split))


def test_bradley_terry_loss_by_hand():
    # margins 1, -1, 0: (log(1 + e^-1) + log(1 + e) + log 2) / 3 = 0.7732
    loss = train.bradley_terry_loss(torch.tensor([2.0, 0.5, 1.0]), torch.tensor([1.0, 1.5, 1.0]))
    assert abs(loss.item() - 0.7732) < 1e-4


def test_per_token_kl_and_shaped_rewards_by_hand():
    logp = torch.tensor([[-0.5, -1.0, -0.2, -0.3], [-0.7, -0.1, 0.0, 0.0]])
    ref = torch.tensor([[-0.7, -0.9, -0.6, -0.3], [-0.7, -0.4, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    kl = train.per_token_kl(logp, ref, mask, "k1")
    torch.testing.assert_close(kl, torch.tensor([[0.2, -0.1, 0.4, 0.0], [0.0, 0.3, 0.0, 0.0]]))
    assert (train.per_token_kl(logp, ref, mask, "k3") >= 0).all()
    rewards = train.shape_rewards(torch.tensor([1.0, -0.5]), kl, mask, 0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.02, 0.01, -0.04, 1.0], [0.0, -0.53, 0.0, 0.0]]))


def test_compute_gae_on_tokens_by_hand():
    rewards = torch.tensor([[-0.02, 0.01, -0.04, 1.0], [0.0, -0.53, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.4, 0.5, 0.8], [0.1, -0.2, 0.7, 0.7]])  # values on padding must not leak in
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    adv, ret = train.compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # completion 2: A_1 = -0.53 - (-0.2) = -0.33 (terminal, no bootstrap);
    # A_0 = (0 - 0.2 - 0.1) + 0.95 * -0.33
    torch.testing.assert_close(adv, torch.tensor([[0.590625, 0.5375, 0.45, 0.2], [-0.6135, -0.33, 0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.890625, 0.9375, 0.95, 1.0], [-0.5135, -0.53, 0.0, 0.0]]))


def test_whiten_over_real_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    white = train.whiten(x, mask)
    real = white[mask.bool()]
    assert abs(real.mean().item()) < 1e-6 and abs(real.std().item() - 1) < 1e-4
    assert (white[~mask.bool()] == 0).all()  # padding stays 0 and its values do not count
    kept = train.whiten(x, mask, shift_mean=False)[mask.bool()]
    assert abs(kept.mean().item() - 2.5) < 1e-5


def test_value_loss_is_clipped():
    values, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, clipfrac = train.ppo_value_loss(values, old, ret, mask, clip=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> max 3.24; token 1: both (0-1)^2 = 1
    assert abs(loss.item() - 0.5 * (3.24 + 1.0) / 2) < 1e-6 and clipfrac.item() == 0.5


def test_policy_loss_clips_and_is_zero_for_zero_advantage():
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 1.0]]))
    loss, clipfrac, approx_kl = train.ppo_policy_loss(logp, old, torch.tensor([[1.0, 1.0]]),
                                                      torch.ones(1, 2), 0.2)
    assert abs(loss.item() + (1.2 + 1.0) / 2) < 1e-6 and clipfrac.item() == 0.5 and approx_kl.item() > 0
    loss0, _, _ = train.ppo_policy_loss(logp, old, torch.zeros(1, 2), torch.ones(1, 2), 0.2)
    assert loss0.item() == 0


def test_adapter_on_the_top_blocks_only(tiny_lm):
    """--ppo-lora-layers 1: the lower block stays frozen, and the log-probs' gradient reaches the adapter."""
    torch.manual_seed(0)
    base, tokenizer = train.load_base(str(tiny_lm))
    policy = train.add_lora(base, top_blocks=1)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n and "lora_" in n for n in trainable)
    batch = train.rollout(policy, tokenizer, [{"question": "1 + 2 ="}, {"question": "10 + 20 + 3 ="}],
                          train.Args(max_new_tokens=5))
    (train.policy_forward(policy, None, batch, 1.0)[0] * batch["mask"]).sum().backward()
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_policy_log_probs_match_the_models_own_head(tiny_lm):
    """policy_forward applies the output head to real completion tokens only: the same log-probs and entropy
    as the model's full logits there, 0 after EOS."""
    torch.manual_seed(0)
    model, tokenizer = train.load_base(str(tiny_lm))
    prompt_ids, prompt_mask, completion_ids, mask = train.generate(
        model, tokenizer, ["1 + 2 =", "10 + 20 + 3 ="], 6, temperature=1.0)
    mask[0, 2:] = 0  # a completion that ended early
    batch = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids, mask=mask)
    logp, _, entropy = train.policy_forward(model, None, batch, 0.7)
    attention = torch.cat([prompt_mask, mask], dim=1)
    logits = model(input_ids=torch.cat([prompt_ids, completion_ids], dim=1), attention_mask=attention,
                   position_ids=(attention.cumsum(1) - 1).clamp(min=0)).logits[:, prompt_ids.shape[1] - 1:-1]
    logps = torch.log_softmax(logits / 0.7, dim=-1)
    expected = logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logp, expected * mask, atol=1e-5) and (logp[0, 2:] == 0).all()
    assert torch.allclose(entropy, -(logps.exp() * logps).sum(-1) * mask, atol=1e-5)


def test_sequence_reward_on_hand_written_completions():
    texts = ["12 + 5 = 17\n#### 17",  # correct
             "12 + 5 = 18\n#### 18",  # wrong
             "The answer is 17.",  # no format
             "12 + 5 = 17\n#### 17",  # correct but long (40 of 48 tokens)
             "12 + 5 = 17 and so on and so on"]  # hit the limit, no EOS
    lengths, ended = torch.tensor([12, 12, 8, 40, 48]), torch.tensor([True, True, True, True, False])
    reward, c = train.sequence_reward(texts, ["17"] * 5, lengths, ended, max_new_tokens=48)
    assert c["correct"].tolist() == [1, 0, 0, 1, 0] and c["format"].tolist() == [1, 1, 0, 1, 0]
    assert c["no_eos"].tolist() == [0, 0, 0, 0, 1]
    assert c["brevity"][0] > c["brevity"][3] > 0 and c["brevity"][1] == 0  # brevity pays only correct answers
    assert reward[0] > reward[3] > reward[1] > reward[2] > reward[4]
    torch.testing.assert_close(reward[:2], torch.tensor([1.0 + 0.2 + 0.1 * (1 - 12 / 48), 0.2]))


def test_first_slip_marks_where_the_work_goes_wrong():
    assert train.first_slip("82 + 17 = 99\n#### 99") is None and train.first_slip("#### 17") is None
    assert train.first_slip("82 + 17 = 101\n#### 101") == len("82 + 17 = ")  # the first wrong digit
    assert train.first_slip("82 + 17 = 9\n#### 9") == len("82 + 17 = 9")  # the result stops short
    assert train.first_slip("82 + 17 = 9") is None  # could still become 99
    # only the first slip
    assert train.first_slip("5 * 8 = 40\n40 - 17 = 33\n33 + 1 = 34\n#### 34") == len("5 * 8 = 40\n40 - 17 = ")
    # the final line contradicts the work
    assert train.first_slip("82 + 17 = 99\n#### 98") == len("82 + 17 = 99\n#### 9")
    assert train.first_slip("30 - 41 = -11\n#### -11") is None


def test_slip_penalty_lands_on_the_token_that_writes_it():
    class DigitTokenizer:  # one token per character, as SmolLM2 splits digits
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)
    texts = ["8 + 1 = 10\n#### 10", "8 + 1 = 9\n#### 9"]
    width = max(map(len, texts))
    ids = torch.tensor([[ord(c) for c in t] + [0] * (width - len(t)) for t in texts])
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in texts])
    penalties, no_slip = train.slip_penalties(DigitTokenizer(), ids, mask, texts, 0.5)
    assert penalties[0, len("8 + 1 = ")] == -0.5 and penalties.sum() == -0.5 and no_slip.tolist() == [0, 1]


def test_reward_model_reads_the_last_real_token():
    torch.manual_seed(0)
    rm = train.RewardModel(dim=16, layers=1).eval()
    ids, segments, positions, places, lengths = train.encode_for_reward(
        ["What is 2 + 3?", "What is 12 + 30?"], ["2 + 3 = 5\n#### 5", "#### 42"])
    # positions restart at the answer
    assert positions[0, len("What is 2 + 3?")] == 0 and ids[0, lengths[0] - 1] == train.END
    assert (train.reward_text(" 47 + 138 = 185\n") == "74 + 831 = 581"
            and places[1, lengths[1] - 3:lengths[1] - 1].tolist() == [1, 2])  # "24": units first
    assert (ids[1, lengths[1]:] == train.PAD).all() and segments[0, :len("What is 2 + 3?")].sum() == 0
    alone = rm.score(["What is 12 + 30?"], ["#### 42"])
    torch.testing.assert_close(rm.score(["What is 2 + 3?", "What is 12 + 30?"],
                                        ["2 + 3 = 5\n#### 5", "#### 42"])[1:], alone)
    rm.standardize(["What is 2 + 3?"] * 3, ["#### 5", "#### 6", "2 + 3 = 5\n#### 5"])
    standard = rm.score(["What is 2 + 3?"] * 3, ["#### 5", "#### 6", "2 + 3 = 5\n#### 5"])
    assert abs(standard.mean().item()) < 1e-5 and abs(standard.std().item() - 1) < 1e-4
    fresh = train.RewardModel(dim=16, layers=1)
    loss = fresh.next_char_loss(fresh.hidden(ids, segments, positions, places), ids, segments)
    assert torch.isfinite(loss) and loss.item() > 0


def test_prefix_targets_mark_the_first_wrong_digit():
    question, chosen, rejected = "What is 47 + 38?", "47 + 38 = 85\n#### 85", "47 + 38 = 75\n#### 75"
    _, segments, _, _, _ = train.encode_for_reward([question, question], [chosen, rejected])
    targets = train.prefix_targets(chosen, rejected, segments)
    start = len(question) + 1  # the first answer character, after ANSWER
    assert targets[:, :start].isnan().all()  # no target on the question or on ANSWER
    assert (targets[0, start:] == 1).all()  # every character of the chosen answer, END included
    # reversed digits: 85 reads 58, 75 reads 57, so the tens digit is the first to differ
    wrong = start + len("74 + 83 = 5")
    assert (targets[1, start:wrong] == 1).all() and (targets[1, wrong:] == 0).all()


def test_result_digit_accuracy_reads_the_digits_after_the_equals_sign():
    evaluate = load_script("ppo_rlhf_math", "eval")

    class Reader:  # next_char(hidden(ids)) at position k predicts the character at k + shift
        def __init__(self, shift):
            self.shift = shift

        def hidden(self, ids, *rest):
            return torch.nn.functional.one_hot(ids.roll(-self.shift, 1), 128).float()

        def next_char(self, hidden):
            return hidden
    answers = ["11 + 11 = 22\n#### 22", "4 * 8 = 32\n32 - 5 = 27\n#### 27"]
    assert evaluate.result_digit_accuracy(Reader(shift=1), answers) == 1.0  # always the right next character
    # repeating the current character: right only on the second 2 of 22
    # (read units first, 32 and 27 read 23 and 72)
    assert evaluate.result_digit_accuracy(Reader(shift=0), answers) == pytest.approx(1 / 6, abs=1e-4)


def test_perturbed_solution_is_wrong_and_well_formed():
    rng = random.Random(0)
    for p in train.distinct_problems(3, 50):
        wrong = train.perturb_solution(p, rng)
        assert train.extract_answer(wrong) not in (None, p["answer"])


def test_each_stage_runs_and_writes_outputs(tiny_pipeline):
    out, summary = tiny_pipeline
    assert set(summary) == {"sft", "reward", "ppo"} and all(summary[s]["seconds"] > 0 for s in summary)
    assert (out / "sft" / "adapter" / "adapter_config.json").is_file()
    assert ((out / "reward" / "model" / "reward_model.pt").is_file()
            and 0 <= summary["reward"]["pairwise_accuracy"] <= 1)
    phases = [line.split(",")[1] for line in (out / "reward" / "metrics.csv").read_text().splitlines()[1:]]
    assert phases == ["arithmetic"] * 2 + ["warmup"] * 2 + ["pairs"] * 2
    assert ((out / "ppo" / "adapter" / "value_head.pt").is_file()
            and (out / "ppo" / "learning_curve.png").is_file())
    evals = sorted((out / "ppo").glob("eval_step*.json"))
    assert (len(evals) == 3
            and {"accuracy", "format_rate", "mean_length", "n"} <= set(json.loads(evals[-1].read_text())))
    rows = (out / "ppo" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for name in ("policy_loss", "value_loss", "kl", "reward_reward_model", "reward_no_slip", "grad_norm"):
        assert all(float(r.split(",")[header.index(name)]) == float(r.split(",")[header.index(name)])
                   for r in rows[1:]), name
    assert json.loads((out / "ppo" / "summary.json").read_text())["final"]["n"] == 4
    assert (json.loads((out / "reward" / "summary.json").read_text())["pairwise_accuracy"]
            == summary["reward"]["pairwise_accuracy"])


def test_a_stage_never_overwrites(tiny_pipeline, tiny_lm):
    out, _ = tiny_pipeline
    before = sorted(out.rglob("*"))
    result = run("train.py", "--stage", "sft", "--model", str(tiny_lm), "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"error: --out {out} already holds a sft stage ({out / 'sft'}), "
                                          "and runs are never overwritten; pass another --out"]
    assert sorted(out.rglob("*")) == before


def test_default_run_dir_is_one_per_seed_and_never_overwritten(tmp_path, monkeypatch):
    """Without --out, every stage goes to runs/ppo_rlhf_math_s<seed>, so a later stage joins the earlier ones;
    a stage whose sub-directory there is taken is refused with one line asking for another --out."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "ppo_rlhf_math_s1" / "sft").mkdir(parents=True)
    (tmp_path / "runs" / "ppo_rlhf_math_s1" / "sft" / "metrics.csv").write_text("step,loss\n")
    (tmp_path / "runs" / "ppo_rlhf_math_s1" / "reward").mkdir()  # empty: free
    for stage in ("reward", "ppo"):
        run_dir, sft_adapter, reward_dir = train.run_paths(train.Args(stage=stage))
        assert (str(run_dir), str(sft_adapter), str(reward_dir)) == (
            "runs/ppo_rlhf_math_s1", "runs/ppo_rlhf_math_s1/sft/adapter",
            "runs/ppo_rlhf_math_s1/reward/model")
    for stage in ("sft", "all"):
        with pytest.raises(ValueError, match=r"^--out runs/ppo_rlhf_math_s1 already holds a sft stage .*; "
                                             r"pass another --out$"):
            train.run_paths(train.Args(stage=stage))
    assert str(train.run_paths(train.Args(stage="sft", seed=2))[0]) == "runs/ppo_rlhf_math_s2"
    # checks make nothing
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ppo_rlhf_math_s1"]


def test_no_flags_says_it_runs_all_three_stages(capsys):
    args = train.parse_args([])  # checks only: nothing runs, nothing is created
    assert args.stage == "all"
    said = capsys.readouterr().err
    assert said.startswith("no flags: --stage all, the three stages one after the other (about 105 min on 2 "
                           "CPU cores); one stage at a time: --stage sft") and said.count("\n") == 1


def test_eval_json_for_each_stage(tiny_pipeline, tiny_lm):
    out, _ = tiny_pipeline
    for stage in ("base", "sft", "ppo"):
        result = run("eval.py", "--stage", stage, "--model", str(tiny_lm),
                     "--sft-adapter", str(out / "sft" / "adapter"),
                     "--ppo-adapter", str(out / "ppo" / "adapter"),
                     "--n", "3", "--max-new-tokens", "4", "--json")
        assert result.returncode == 0, result.stderr
        metrics = json.loads(result.stdout.strip().splitlines()[-1])
        assert list(metrics)[-1] == "n" and metrics["n"] == 3 and 0 <= metrics["accuracy"] <= 1
        assert "by kind: " in result.stderr  # accuracy per kind of problem (add, sub, mul, word)
    result = run("eval.py", "--stage", "base", "--model", str(tiny_lm), "--unseen", "3",
                 "--max-new-tokens", "4", "--json")
    assert (result.returncode == 0
            and json.loads(result.stdout.strip().splitlines()[-1])["n"] == 3), result.stderr
    result = run("eval.py", "--stage", "sft", "--model", str(tiny_lm),
                 "--sft-adapter", str(out / "sft" / "adapter"), "--n", "3",
                 "--max-new-tokens", "4", "--pass-at", "3", "--json")
    assert result.returncode == 0, result.stderr
    m = json.loads(result.stdout.strip().splitlines()[-1])
    assert m["k"] == 3 and m["majority_at_k"] <= m["pass_at_k"] and m["sample_accuracy"] <= m["pass_at_k"]
    assert m["near_ties"] <= 1 - m["accuracy"]
    result = run("eval.py", "--stage", "reward", "--model", str(tiny_lm),
                 "--sft-adapter", str(out / "sft" / "adapter"),
                 "--reward-dir", str(out / "reward" / "model"), "--max-new-tokens", "4", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    # a perturbed pair for each of 100 problems, and sampled ones
    assert (metrics["n"] >= 100 and 0 <= metrics["pairwise_accuracy"] <= 1
            and 0 <= metrics["result_digit_accuracy"] <= 1)


def test_shipped_files_load():
    """The shipped reward model loads and mostly prefers the worked solution to the same one with a slip
    (perturbed pairs on its 100 held-out problems; eval.py --stage reward measures 0.91 on these with the SFT
    model's answers too); the shipped adapters are LoRA adapters of the rank train.py uses."""
    rm = train.load_reward_model(FOLDER / "reward_model")
    held = {p["question"] for p in train.heldout_problems(200)}
    problems = [train.split_solution(p) for p in train.distinct_problems(train.RM_HELDOUT_SEED, 100, held)]
    # one perturbed pair each
    pairs = train.preference_pairs(problems, [[] for _ in problems], random.Random(0))
    assert len(pairs) == 100 and train.pairwise_accuracy(rm, pairs) >= 0.8
    for adapter in ("sft_adapter", "ppo_adapter"):
        config = json.loads((FOLDER / adapter / "adapter_config.json").read_text())
        assert config["r"] == train.LORA_R and (FOLDER / adapter / "adapter_model.safetensors").is_file()
    assert (FOLDER / "ppo_adapter" / "value_head.pt").is_file()


def test_bad_inputs_give_one_clear_error(tmp_path):
    result = run("train.py", "--stage", "sft", "--model", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr == f"error: --model {str(tmp_path / 'nope')!r}: no such directory\n"
    not_a_model = tmp_path / "empty_dir"
    not_a_model.mkdir()
    result = run("train.py", "--stage", "sft", "--model", str(not_a_model), "--out", str(tmp_path / "r2"))
    assert (result.returncode != 0 and "error: cannot load --model" in result.stderr
            and "Traceback" not in result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_dir"]  # a failed run leaves no run directory
    result = run("train.py", "--stage", "dpo")
    assert (result.returncode == 2
            and result.stderr.startswith("error: argument --stage: invalid choice: 'dpo'"))
    result = run("eval.py", "--stage", "sft", "--sft-adapter", str(tmp_path / "missing"))
    assert result.returncode != 0 and "no adapter" in result.stderr and "Traceback" not in result.stderr
    result = run("eval.py", "--stage", "reward", "--reward-dir", str(tmp_path / "missing"))
    assert result.returncode == 2 and "no reward model" in result.stderr
    result = run("eval.py", "--unseen", "5", "--problems", __file__)
    assert result.returncode == 2 and "--unseen" in result.stderr
    result = run("train.py", "--ppo-lora-layers", "-1")
    assert (result.returncode == 2 and "--ppo-lora-layers" in result.stderr
            and "must be 0 or more" in result.stderr)
