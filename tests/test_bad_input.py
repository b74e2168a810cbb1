"""Bad input for every script: one table of invocations that each fail in one line, before anything heavy.

Each row of BAD_INPUT is (script, its flags, the flag the error must name). The script runs as a subprocess
from the repository root; the test asserts a non-zero exit, no "Traceback" and an `error:` line naming the
flag. In the flags, {tmp} is a folder of files the scripts did not write (`unrelated_files`), and the test
checks that every one of them is left as it was. The checks come before a model loads or an episode runs,
so a row would cost what the script's imports cost (seconds: torch, transformers): the rows run in a fork of
this process instead (`run_forked`), whose libraries are imported once, and the first row of each script
also runs in a fresh interpreter, so the fork cannot hide what a real command line would show.

The tests after the table hold every script to the rule for outputs: nothing deletes or overwrites what it
did not write (--out, --save-to, --gif pointed at an unrelated file or a folder holding one), a taken default
run directory gets the next free suffix, a failed check leaves no run directory, and a checkpoint or GIF of
the script's own kind is replaced with a line that says so.
"""
import importlib
import importlib.util
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_script

CP_TRAIN, CP_EVAL = "cartpole_reinforce/train.py", "cartpole_reinforce/eval.py"
LL_TRAIN, LL_EVAL = "lunarlander_ppo/train.py", "lunarlander_ppo/eval.py"
TT_TRAIN, TT_EVAL = "tictactoe_selfplay/train.py", "tictactoe_selfplay/eval.py"
TT_PLAY = "tictactoe_selfplay/play.py"
GRPO_TRAIN, GRPO_EVAL = "grpo_lm/train.py", "grpo_lm/eval.py"
RLHF_TRAIN, RLHF_EVAL = "ppo_rlhf_math/train.py", "ppo_rlhf_math/eval.py"
NOWHERE = "/proc/rl-from-scratch"  # a folder that cannot be created, not even by root
NO_MUJOCO = pytest.mark.skipif(importlib.util.find_spec("mujoco") is not None, reason="MuJoCo is installed")

BAD_INPUT = [
    # cartpole_reinforce/train.py
    (CP_TRAIN, ["--log-every", "0"], "--log-every"),
    (CP_TRAIN, ["--device", "quantum"], "--device"),
    (LL_TRAIN, ["--device", "cuda:99"], "--device"),  # no such GPU (none at all on most machines)
    (TT_TRAIN, ["--device", "tpu"], "--device"),
    (CP_TRAIN, ["--max-episodes", "-1"], "--max-episodes"),
    (CP_TRAIN, ["--solve-window", "0"], "--solve-window"),
    (CP_TRAIN, ["--lr", "nan"], "--lr"),
    (CP_TRAIN, ["--gamma", "1.5"], "--gamma"),
    (CP_TRAIN, ["--seed", "-1"], "--seed"),
    (CP_TRAIN, ["--seed", "one"], "--seed"),
    (CP_TRAIN, ["--out", f"{NOWHERE}/run"], "--out"),
    (CP_TRAIN, ["--out", "{tmp}/notes.txt"], "--out"),  # an existing file
    (CP_TRAIN, ["--out", "{tmp}/notes.txt/run"], "--out"),  # below a file
    (CP_TRAIN, ["--save-to", "{tmp}/full.pt"], "--save-to"),  # a directory
    (CP_TRAIN, ["--save-to", f"{NOWHERE}/policy.pt"], "--save-to"),
    (CP_TRAIN, ["--save-to", "{tmp}/policy"], "--save-to"),  # not a .pt file
    (CP_TRAIN, ["--save-to", "{tmp}/ppo.pt"], "--save-to"),  # a checkpoint of another kind
    # cartpole_reinforce/eval.py
    (CP_EVAL, ["--gif", "{tmp}/cartpole"], "--gif"),  # no extension
    (CP_EVAL, ["--gif", "{tmp}/cartpole.png"], "--gif"),
    (CP_EVAL, ["--gif", f"{NOWHERE}/cartpole.gif"], "--gif"),
    (CP_EVAL, ["--weights", "{tmp}/missing.pt"], "--weights"),
    (CP_EVAL, ["--weights", "{tmp}/full.pt"], "--weights"),  # a directory
    (CP_EVAL, ["--weights", "{tmp}/empty.pt"], "--weights"),
    (CP_EVAL, ["--weights", "{tmp}/ppo.pt"], "--weights"),
    (CP_EVAL, ["--episodes", "0"], "--episodes"),
    (CP_EVAL, ["--seed", "-1"], "--seed"),
    (CP_EVAL, ["--render"], "--render"),  # no display
    # lunarlander_ppo/train.py
    (LL_TRAIN, ["--env-id", "Blackjack-v1"], "--env-id"),  # Tuple observations
    (LL_TRAIN, ["--env-id", "FrozenLake-v1", "--env-kwargs", '{"slippery": false}'], "--env-kwargs"),
    (LL_TRAIN, ["--env-kwargs", "is_slippery=False"], "--env-kwargs"),  # not JSON
    (LL_TRAIN, ["--env-id", "CarRacing-v3"], "--env-id"),  # image observations
    pytest.param(LL_TRAIN, ["--env-id", "HalfCheetah-v5"], "--env-id", marks=NO_MUJOCO),
    (LL_TRAIN, ["--env-id", "LunarLander-v2"], "--env-id"),  # gone in Gymnasium 1.x
    (LL_TRAIN, ["--env-id", "CartPole-v1", "--wind"], "--wind"),
    (LL_TRAIN, ["--num-envs", "0"], "--num-envs"),
    (LL_TRAIN, ["--num-minibatches", "3"], "--num-minibatches"),
    (LL_TRAIN, ["--total-timesteps", "-5"], "--total-timesteps"),
    (LL_TRAIN, ["--eval-every", "0"], "--eval-every"),
    (LL_TRAIN, ["--seed", "-1"], "--seed"),
    (LL_TRAIN, ["--anneal-lr", "maybe"], "--anneal-lr"),
    (LL_TRAIN, ["--out", f"{NOWHERE}/run"], "--out"),
    (LL_TRAIN, ["--out", "{tmp}/notes.txt"], "--out"),
    (LL_TRAIN, ["--save-to", "{tmp}/full.pt"], "--save-to"),
    (LL_TRAIN, ["--save-to", f"{NOWHERE}/agent.pt"], "--save-to"),
    (LL_TRAIN, ["--save-to", "{tmp}/cartpole.pt"], "--save-to"),
    # lunarlander_ppo/eval.py
    (LL_EVAL, ["--gif", "{tmp}/landing"], "--gif"),
    (LL_EVAL, ["--gif", f"{NOWHERE}/landing.gif"], "--gif"),
    (LL_EVAL, ["--weights", "{tmp}/empty.pt"], "--weights"),
    (LL_EVAL, ["--weights", "{tmp}/cartpole.pt"], "--weights"),
    pytest.param(LL_EVAL, ["--weights", "{tmp}/mujoco.pt"], "--weights", marks=NO_MUJOCO),  # a MuJoCo env
    (LL_EVAL, ["--seed", "-1"], "--seed"),
    (LL_EVAL, ["--weights", "{tmp}/renamed.pt"], "--weights"),  # names an env its networks do not fit
    # tictactoe_selfplay/train.py
    (TT_TRAIN, ["--games", "0"], "--games"),
    (TT_TRAIN, ["--games-per-update", "-1"], "--games-per-update"),
    (TT_TRAIN, ["--max-opening-moves", "5"], "--max-opening-moves"),
    (TT_TRAIN, ["--mirror-share", "0.9"], "--mirror-share"),
    (TT_TRAIN, ["--seed", "-1"], "--seed"),
    (TT_TRAIN, ["--out", f"{NOWHERE}/run"], "--out"),
    (TT_TRAIN, ["--out", "{tmp}/notes.txt"], "--out"),
    (TT_TRAIN, ["--save-to", "{tmp}/full.pt"], "--save-to"),
    (TT_TRAIN, ["--save-to", f"{NOWHERE}/agent.pt"], "--save-to"),
    (TT_TRAIN, ["--save-to", "{tmp}/cartpole.pt"], "--save-to"),
    # tictactoe_selfplay/eval.py and play.py
    (TT_EVAL, ["--games", "0"], "--games"),
    (TT_EVAL, ["--weights", "{tmp}/full.pt"], "--weights"),
    (TT_EVAL, ["--weights", "{tmp}/ppo.pt"], "--weights"),
    (TT_PLAY, ["--first", "nobody"], "--first"),
    (TT_PLAY, ["--weights", "{tmp}/empty.pt"], "--weights"),
    # grpo_lm/train.py
    (GRPO_TRAIN, ["--steps", "0"], "--steps"),
    (GRPO_TRAIN, ["--num-generations", "1"], "--num-generations"),
    (GRPO_TRAIN, ["--temperature", "nan"], "--temperature"),
    (GRPO_TRAIN, ["--loss-type", "ppo"], "--loss-type"),
    (GRPO_TRAIN, ["--model", "/no/such/dir"], "--model"),
    (GRPO_TRAIN, ["--problems", "{tmp}/binary.jsonl"], "--problems"),
    (GRPO_TRAIN, ["--problems", "{tmp}/words.jsonl"], "--problems"),  # an answer that is not a number
    (GRPO_TRAIN, ["--out", "{tmp}/full"], "--out"),
    (GRPO_TRAIN, ["--out", f"{NOWHERE}/run"], "--out"),
    (GRPO_TRAIN, ["--save-to", f"{NOWHERE}/adapter"], "--save-to"),
    (GRPO_TRAIN, ["--micro-batch", "0"], "--micro-batch"),
    (GRPO_TRAIN, ["--warmup-examples", "-1"], "--warmup-examples"),
    (GRPO_TRAIN, ["--beta", "nan"], "--beta"),
    (GRPO_TRAIN, ["--epsilon-high", "-0.1"], "--epsilon-high"),
    (GRPO_TRAIN, ["--save-to", "{tmp}/notes.txt"], "--save-to"),
    (GRPO_TRAIN, ["--init-adapter", "{tmp}/full"], "--init-adapter"),
    # grpo_lm/eval.py
    (GRPO_EVAL, ["--problems", "{tmp}/binary.jsonl"], "--problems"),
    (GRPO_EVAL, ["--problems", "{tmp}/empty.jsonl"], "--problems"),
    (GRPO_EVAL, ["--problems", "{tmp}/full"], "--problems"),  # a directory
    (GRPO_EVAL, ["--adapter", "{tmp}/full"], "--adapter"),
    (GRPO_EVAL, ["--n", "0"], "--n"),
    (GRPO_EVAL, ["--pass-at", "-1"], "--pass-at"),
    (GRPO_EVAL, ["--unseen", "4", "--problems", "{tmp}/words.jsonl"], "--unseen"),
    # ppo_rlhf_math/train.py
    (RLHF_TRAIN, ["--out", f"{NOWHERE}/run"], "--out"),
    (RLHF_TRAIN, ["--out", "{tmp}/notes.txt"], "--out"),
    (RLHF_TRAIN, ["--stage", "ppo", "--out", "{tmp}/lm_run", "--sft-adapter", "{tmp}/adapter",
                  "--reward-dir", "{tmp}/reward"], "--out"),  # its ppo stage is taken
    (RLHF_TRAIN, ["--stage", "ppo", "--out", "{tmp}/new"], "--sft-adapter"),  # no SFT stage in --out
    (RLHF_TRAIN, ["--stage", "reward", "--sft-adapter", "{tmp}/full"], "--sft-adapter"),
    (RLHF_TRAIN, ["--stage", "ppo", "--sft-adapter", "{tmp}/adapter", "--reward-dir", "{tmp}/full"],
     "--reward-dir"),
    (RLHF_TRAIN, ["--ppo-steps", "0"], "--ppo-steps"),
    (RLHF_TRAIN, ["--eval-every", "-1"], "--eval-every"),
    (RLHF_TRAIN, ["--kl-coef", "-0.1"], "--kl-coef"),
    (RLHF_TRAIN, ["--w-slip", "nan"], "--w-slip"),
    (RLHF_TRAIN, ["--model", "/no/such/dir"], "--model"),
    # ppo_rlhf_math/eval.py
    (RLHF_EVAL, ["--problems", "{tmp}/binary.jsonl"], "--problems"),
    (RLHF_EVAL, ["--problems", "{tmp}/words.jsonl"], "--problems"),
    (RLHF_EVAL, ["--problems", "{tmp}/notjson.jsonl"], "--problems"),
    (RLHF_EVAL, ["--problems", "{tmp}/nokey.jsonl"], "--problems"),
    (RLHF_EVAL, ["--stage", "sft", "--sft-adapter", "{tmp}/full"], "--sft-adapter"),
    (RLHF_EVAL, ["--stage", "reward", "--reward-dir", "{tmp}/full"], "--reward-dir"),
    (RLHF_EVAL, ["--batch-size", "0"], "--batch-size"),
    (RLHF_EVAL, ["--model", "/no/such/dir"], "--model"),
]


def unrelated_files(tmp: Path) -> None:
    """Files and folders that no script wrote: none of them may change."""
    (tmp / "notes.txt").write_text("an unrelated file\n")
    for folder in ("full", "full.pt", "full.gif"):  # folders holding an unrelated file
        (tmp / folder).mkdir()
        (tmp / folder / "notes.txt").write_text("an unrelated file\n")
    (tmp / "notes.pt").write_text("an unrelated file named like a checkpoint\n")
    (tmp / "notes.gif").write_text("an unrelated file named like a GIF\n")
    (tmp / "empty.pt").write_bytes(b"")
    shutil.copy(REPO / "cartpole_reinforce" / "policy.pt", tmp / "cartpole.pt")
    shutil.copy(REPO / "lunarlander_ppo" / "agent.pt", tmp / "ppo.pt")
    checkpoint = torch.load(tmp / "ppo.pt", weights_only=True)
    torch.save({**checkpoint, "env_id": "HalfCheetah-v5"}, tmp / "mujoco.pt")  # as if trained on a MuJoCo env
    torch.save({**checkpoint, "env_id": "CartPole-v1"}, tmp / "renamed.pt")
    # for the language-model scripts: --problems files that are not problems, run directories and models
    (tmp / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x89PNG not text")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "notjson.jsonl").write_text("question: What is 1 + 1?\n")
    (tmp / "nokey.jsonl").write_text('{"question": "What is 1 + 1?"}\n')
    (tmp / "words.jsonl").write_text('{"question": "What is 1 + 1?", "answer": "two"}\n')
    (tmp / "lm_run" / "ppo").mkdir(parents=True)  # a run whose ppo stage is taken
    (tmp / "lm_run" / "ppo" / "notes.txt").write_text("an unrelated file\n")
    (tmp / "adapter").mkdir()  # stands in for an adapter: only its config is looked at before a model loads
    (tmp / "adapter" / "adapter_config.json").write_text("{}\n")
    (tmp / "reward").mkdir()
    (tmp / "reward" / "reward_model.pt").write_text("a reward model, as far as the checks look\n")


def snapshot(folder: Path) -> dict:
    """Every path below `folder` with its bytes (None for a folder)."""
    return {p.relative_to(folder): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


ENV = {"MPLBACKEND": "Agg", "SDL_VIDEODRIVER": "dummy", "HF_HUB_OFFLINE": "1"}
DISPLAYS = ("DISPLAY", "WAYLAND_DISPLAY")  # --render must find no display, and no window opens
PRELOADED = ("torch", "gymnasium", "accelerate", "tqdm", "peft", "transformers", "matplotlib.pyplot")


def run(script: str, argv: list, cwd: Path = REPO, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, **ENV}
    for name in DISPLAYS:
        env.pop(name, None)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(REPO / script), *argv], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def run_forked(script: str, argv: list) -> subprocess.CompletedProcess:
    """`python script argv` from the repository root, in a child forked from this process: the same
    __main__ run, stdin, stdout, stderr and exit status, with the libraries already imported."""
    for name in PRELOADED:
        importlib.import_module(name)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                signal.alarm(120)  # a child stuck on a lock it inherited fails its row instead of hanging
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdin, sys.stdout, sys.stderr = open(0), open(1, "w"), open(2, "w")
                os.chdir(REPO)
                os.environ.update(ENV)
                for name in DISPLAYS:
                    os.environ.pop(name, None)
                sys.argv, sys.path[0] = [str(REPO / script), *argv], str((REPO / script).parent)
                sys.modules.pop("train", None)  # eval.py and play.py import their own folder's train.py
                runpy.run_path(str(REPO / script), run_name="__main__")
                code = 0
            except SystemExit as exit_:  # what the interpreter does with it
                if isinstance(exit_.code, int) or exit_.code is None:
                    code = exit_.code or 0
                else:
                    print(exit_.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        streams = []
        for stream in (out, err):
            stream.seek(0)
            streams.append(stream.read().decode(errors="replace"))
    return subprocess.CompletedProcess([script, *argv], os.waitstatus_to_exitcode(status), *streams)


def assert_fails_in_one_line(result: subprocess.CompletedProcess, flag: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert any("error: " in line and flag in line for line in result.stderr.splitlines()), result.stderr


@pytest.mark.parametrize("script, argv, flag", BAD_INPUT)
def test_bad_input_fails_in_one_line(tmp_path, script, argv, flag):
    unrelated_files(tmp_path)
    before = snapshot(tmp_path)
    result = run_forked(script, [arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    assert_fails_in_one_line(result, flag)
    assert snapshot(tmp_path) == before


PLAIN_ROWS = [row for row in BAD_INPUT if not hasattr(row, "marks")]  # pytest.param rows are skippable
FIRST_ROWS = [next(row for row in PLAIN_ROWS if row[0] == script)
              for script in dict.fromkeys(r[0] for r in PLAIN_ROWS)]


@pytest.mark.parametrize("script, argv, flag", FIRST_ROWS)
def test_the_first_row_of_each_script_in_a_fresh_interpreter(tmp_path, script, argv, flag):
    unrelated_files(tmp_path)
    before = snapshot(tmp_path)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    result = run(script, argv)
    assert result.returncode == run_forked(script, argv).returncode
    assert_fails_in_one_line(result, flag)
    assert snapshot(tmp_path) == before


# --- outputs: nothing is deleted or overwritten that the script did not write ------------------
TINY = {  # budgets so small that a run that got past its checks would still end in seconds
    CP_TRAIN: ["--max-episodes", "2", "--eval-episodes", "1"],
    LL_TRAIN: ["--env-id", "CartPole-v1", "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2",
               "--update-epochs", "1", "--total-timesteps", "32", "--eval-every", "32",
               "--eval-episodes", "1"],
    TT_TRAIN: ["--games", "8", "--games-per-update", "8"],
}
DEFAULT_RUN_DIR = {CP_TRAIN: "runs/cartpole_reinforce_s0", LL_TRAIN: "runs/ppo_CartPole-v1_s1",
                   TT_TRAIN: "runs/tictactoe_s0"}
SHIPPED_WEIGHTS = {CP_TRAIN: "cartpole_reinforce/policy.pt", LL_TRAIN: "lunarlander_ppo/agent.pt",
                   TT_TRAIN: "tictactoe_selfplay/agent.pt"}
SHIPPED_GIF = {CP_EVAL: "cartpole_reinforce/cartpole.gif", LL_EVAL: "lunarlander_ppo/landing.gif"}


@pytest.mark.parametrize("script", TINY)
def test_out_never_overwrites_a_folder_with_an_unrelated_file(tmp_path, script):
    unrelated_files(tmp_path)
    before = snapshot(tmp_path)
    result = run(script, [*TINY[script], "--out", str(tmp_path / "full")])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (f"error: --out {tmp_path / 'full'} exists and is not empty; "
            "pass another --out (runs are never overwritten)") in result.stderr.splitlines()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["full.pt", "notes.pt"])  # a folder holding an unrelated file; a file
@pytest.mark.parametrize("script", TINY)
def test_save_to_never_overwrites_what_it_did_not_write(tmp_path, script, target):
    unrelated_files(tmp_path)
    before = snapshot(tmp_path)
    result = run(script, [*TINY[script], "--save-to", str(tmp_path / target)], cwd=tmp_path)  # default --out
    assert_fails_in_one_line(result, "--save-to")
    assert snapshot(tmp_path) == before  # and so no run directory was left behind in tmp_path/runs


@pytest.mark.parametrize("target", ["full.gif", "notes.gif"])
@pytest.mark.parametrize("script", SHIPPED_GIF)
def test_gif_never_overwrites_what_it_did_not_write(tmp_path, script, target):
    unrelated_files(tmp_path)
    before = snapshot(tmp_path)
    result = run(script, ["--episodes", "1", "--gif", str(tmp_path / target)])
    assert_fails_in_one_line(result, "--gif")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("script", TINY)
def test_a_taken_run_dir_gets_a_suffix_and_an_own_checkpoint_is_replaced(tmp_path, script):
    taken = tmp_path / DEFAULT_RUN_DIR[script]
    taken.mkdir(parents=True)
    (taken / "notes.txt").write_text("an earlier run")
    checkpoint = tmp_path / "mine.pt"
    shutil.copy(REPO / SHIPPED_WEIGHTS[script], checkpoint)
    result = run(script, [*TINY[script], "--save-to", str(checkpoint)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"writing the run to {DEFAULT_RUN_DIR[script]}-2 " in result.stderr
    folder = script.split("/")[0]
    assert f"replacing {checkpoint} (a {folder} checkpoint) as asked by --save-to" in result.stderr
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert (tmp_path / f"{DEFAULT_RUN_DIR[script]}-2" / "metrics.csv").is_file()
    assert checkpoint.read_bytes() != (REPO / SHIPPED_WEIGHTS[script]).read_bytes()


@pytest.mark.parametrize("script", SHIPPED_GIF)
def test_gif_replaces_a_gif_and_says_so(tmp_path, script):
    gif = tmp_path / "old.gif"
    shutil.copy(REPO / SHIPPED_GIF[script], gif)
    result = run(script, ["--episodes", "1", "--gif", str(gif)])
    assert result.returncode == 0, result.stderr
    assert f"replacing {gif} (a GIF) as asked by --gif" in result.stderr
    assert gif.read_bytes()[:4] == b"GIF8"


@pytest.mark.parametrize("script", SHIPPED_GIF)
def test_gif_without_pillow_names_the_pip_command(tmp_path, script):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['PIL'] = None  # not installed\n")
    result = run(script, ["--gif", str(tmp_path / "episode.gif")], pythonpath=str(tmp_path))
    assert_fails_in_one_line(result, "--gif")
    assert "pip install pillow" in result.stderr


# --- one behaviour for every script -------------------------------------------------------------
@pytest.mark.parametrize("script", [CP_TRAIN, CP_EVAL, LL_TRAIN, LL_EVAL, TT_TRAIN, TT_EVAL, TT_PLAY,
                                    RLHF_TRAIN, RLHF_EVAL])
def test_help_shows_the_defaults(script, capsys):
    folder, name = script.removesuffix(".py").split("/")
    with pytest.raises(SystemExit) as exit_info:
        load_script(folder, name).main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "(default: " in out and "(default: )" not in out


def test_rounded_budgets_are_said(tmp_path, capsys):
    load_script("lunarlander_ppo").parse_args(["--env-id", "CartPole-v1", "--num-envs", "2", "--num-steps",
                                               "16", "--num-minibatches", "2", "--total-timesteps", "40",
                                               "--out", str(tmp_path / "a")])
    said = capsys.readouterr().err
    assert "--total-timesteps 40 is not a whole number of rollouts of 32 steps: " in said
    assert "training for 1 x 32 = 32 steps" in said
    load_script("tictactoe_selfplay").parse_args(["--games", "20", "--games-per-update", "8",
                                                  "--out", str(tmp_path / "b")])
    assert "training for 2 x 8 = 16 games at most" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # parse_args only checks


def test_play_asks_again_after_a_superscript_digit():
    """'²' (AltGr+2) is a digit to str.isdigit but not a number to int(); a full-width '５' is both."""
    play = load_script("tictactoe_selfplay", "play")
    answers, said = iter(["²", "５"]), []
    assert play.read_move([0] * 9, lambda prompt: next(answers), said.append) == 4
    assert said == ["'²' is not a number: type a free cell, 1 to 9 (or q to quit)."]
