"""Smoke and unit tests of tictactoe_selfplay/ (actor-critic self-play)."""
import csv
import itertools
import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, load_script

train = load_script("tictactoe_selfplay")
ev = load_script("tictactoe_selfplay", "eval")
play = load_script("tictactoe_selfplay", "play")
PLAY = REPO / "tictactoe_selfplay" / "play.py"


def run(script: str, *flags: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tictactoe_selfplay" / script), *flags], input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", [train, ev, play], ids=["train", "eval", "play"])
def test_help_runs(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out


# --- the environment ----------------------------------------------------------------------------
def stones_off(line, n: int) -> list[int]:
    """n cells off `line` that hold no line themselves (so the other player cannot win first)."""
    for combo in itertools.combinations([c for c in range(9) if c not in line], n):
        if not any(set(other) <= set(combo) for other in train.LINES):
            return list(combo)


@pytest.mark.parametrize("line", train.LINES)
@pytest.mark.parametrize("player", [1, -1])
def test_env_every_line_wins_for_x_and_o(line, player):
    """`player` completes `line` while the other side plays stones elsewhere; O waits for X's opening."""
    env = train.TicTacToeEnv()
    env.reset()
    filler = stones_off(line, 2 if player == 1 else 3)
    if player == -1:
        env.step(filler.pop(0))
    for i, cell in enumerate(line):
        obs, reward, terminated, _, info = env.step(cell)
        if i < 2:
            assert not terminated and reward == 0.0
            env.step(filler[i])
    assert terminated and reward == 1.0 and train.winner(env.board) == player


def test_env_observation_draw_and_illegal_moves():
    env = train.TicTacToeEnv()
    obs, info = env.reset()
    assert info["player"] == 1 and info["action_mask"].all()
    obs, reward, terminated, _, info = env.step(4)
    assert info["player"] == -1 and obs[4] == -1 and not info["action_mask"][4]  # O sees X's stone as -1
    with pytest.raises(ValueError):
        env.step(4)  # occupied
    with pytest.raises(ValueError):
        env.step(9)  # off the board
    env.reset()
    for cell in (0, 1, 2, 4, 3, 5, 7, 6, 8):  # X O X / X O O / O X X: a draw
        obs, reward, terminated, _, _ = env.step(cell)
    assert terminated and reward == 0.0 and train.winner(env.board) == 0
    with pytest.raises(ValueError):
        env.step(0)  # the game is over


# --- the math ------------------------------------------------------------------------------------
def test_masked_policy_and_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0), 5.0]])
    mask = torch.tensor([[True, True, False]])
    log_p = train.masked_log_policy(logits, mask)
    torch.testing.assert_close(log_p.exp(), torch.tensor([[0.25, 0.75, 0.0]]))  # 1:3 over the legal cells
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert math.isclose(float(train.masked_entropy(log_p)), expected, rel_tol=1e-6)


def test_returns_and_actor_critic_loss_by_hand():
    torch.testing.assert_close(train.move_returns(1.0, 3, 0.5), torch.tensor([0.25, 0.5, 1.0]))
    torch.testing.assert_close(train.move_returns(-1.0, 2, 0.9), torch.tensor([-0.9, -1.0]))
    values = torch.tensor([0.5, 0.0], requires_grad=True)
    loss, policy_loss, value_loss = train.actor_critic_loss(torch.log(torch.tensor([0.5, 0.5])), values,
                                                            torch.tensor([1.0, -1.0]), torch.zeros(2),
                                                            0.5, 0.0)
    assert math.isclose(value_loss.item(), (0.25 + 1.0) / 2, rel_tol=1e-6)
    assert math.isclose(policy_loss.item(), -(math.log(0.5) * 0.5 + math.log(0.5) * -1.0) / 2, rel_tol=1e-6)
    loss.backward()  # the advantage is detached: only the value loss reaches V, d/dV 0.5 * mean((G - V)^2)
    torch.testing.assert_close(values.grad, torch.tensor([-0.25, 0.5]))


def test_game_tree_tools():
    assert len(train.positions()) == 4520 and train.minimax_value((0,) * 9) == 0  # perfect play draws
    assert train.minimax_moves((1, 1, 0, -1, -1, 0, 0, 0, 0)) == [2]  # X completes the top row
    perfect = lambda board: train.minimax_moves(board)[0]  # noqa: E731
    first_free = lambda board: train.free_cells(board)[0]  # noqa: E731
    assert train.exhaustive_losing_lines(perfect, 1) == 0 and train.exhaustive_losing_lines(perfect, -1) == 0
    assert train.exhaustive_losing_lines(first_free, 1) > 0
    # the first move is illegal: one losing line
    assert train.exhaustive_losing_lines(lambda board: 9, 1) == 1
    # X plays the first free cell, O only ever has one choice left after X 0, O 1, X 2, ...:
    # exact rates sum to 1
    rates = train.outcome_rates(first_free, 1, train.free_cells)
    assert math.isclose(sum(rates.values()), 1.0) and rates["loss"] > 0


def test_play_batch_records_only_the_learner():
    net = train.ActorCritic(16)
    envs = [train.TicTacToeEnv() for _ in range(3)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    seats = [{1: net, -1: net}, {1: net, -1: None}, {1: train.ActorCritic(16), -1: net}]
    records, winners = train.play_batch(envs, net, seats, openings=[0, 2, 4], epsilon=0.3)
    assert [sorted(r) for r in records] == [[-1, 1], [1], [-1]] and all(w in (1, 0, -1) for w in winners)
    # every move of game 0
    assert len(records[0][1][2]) + len(records[0][-1][2]) == int((envs[0].board != 0).sum())
    for moves in records:
        for obs, masks, actions in moves.values():
            # legal, recorded before the move
            assert all(m[a] and o[a] == 0 for o, m, a in zip(obs, masks, actions))


# --- the shipped agent ---------------------------------------------------------------------------
def test_load_agent_moves_are_legal_and_deterministic():
    agent = ev.load_agent()
    rng = np.random.default_rng(0)
    for _ in range(50):
        board = [0] * 9
        player = 1
        while train.winner(board) == 0 and 0 in board:
            cell = (agent.move(board) if rng.random() < 0.5
                    else int(rng.choice(train.free_cells(tuple(board)))))
            assert board[cell] == 0 and agent.move(board) == agent.move(tuple(board))
            board[cell] = player
            player = -player
    with pytest.raises(ValueError):
        agent.move([1, 1, 1, -1, -1, 0, 0, 0, 0])  # game over
    with pytest.raises(ValueError):
        agent.move([-1, 0, 0, 0, 0, 0, 0, 0, 0])  # O cannot have moved first


def test_shipped_agent_is_unexploitable_and_wins():
    agent = ev.load_agent()
    assert train.exhaustive_losing_lines(agent.move, 1) == 0
    assert train.exhaustive_losing_lines(agent.move, -1) == 0
    assert train.outcome_rates(agent.move, 1, train.free_cells)["win"] >= 0.95
    assert train.outcome_rates(agent.move, -1, train.free_cells)["win"] >= 0.80


def test_eval_script_json(capsys):
    assert ev.main(["--exhaustive", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"losing_lines_x": 0, "losing_lines_o": 0,
                                                                    "losing_lines": 0}
    assert ev.main(["--games", "50", "--json"]) == 0
    results = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (results["random_x_loss"] == results["random_o_loss"] == results["minimax_x_loss"]
            == results["minimax_o_loss"] == 0.0)


@pytest.mark.parametrize("module", [ev, play], ids=["eval", "play"])
def test_bad_weights_is_one_clear_line(tmp_path, capsys, module):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    for weights, message in ((bad, "cannot read"), (tmp_path / "missing.pt", "not found")):
        assert module.main(["--weights", str(weights)]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err


def test_bad_weights_in_a_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"nope")
    result = run("play.py", "--weights", str(tmp_path / "bad.pt"))
    assert result.returncode == 1 and result.stderr.startswith("error: --weights: cannot read")
    assert "Traceback" not in result.stderr


# --- the terminal game ---------------------------------------------------------------------------
def test_scripted_game_through_play_py_with_bad_inputs():
    # The human plays X and starts; bad answers are mixed in and must never cost the turn.
    answers = ["abc", "", "0", "10", "5", "5"] + [str(c) for c in range(1, 10)] * 3 + ["n"]
    result = run("play.py", "--first", "human", stdin="\n".join(answers) + "\n")
    out = result.stdout
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "'abc' is not a number" in out and "There is no cell 0" in out and "There is no cell 10" in out
    assert "Type the number of a free cell" in out and "Cell 5 is taken" in out
    assert " 1 | 2 | 3" in out  # the empty board, cells numbered in reading order
    assert "Play again? [y/N]" in out and "Final score: you 0" in out  # the agent never loses


@pytest.mark.parametrize("stdin", ["q\n", ""])
def test_quit_and_end_of_input_exit_cleanly(stdin):
    result = run("play.py", "--first", "human", stdin=stdin)
    assert (result.returncode == 0 and "Final score: you 0, agent 0, draws 0" in result.stdout
            and not result.stderr)


def test_ctrl_c_exits_cleanly_with_the_score():
    proc = subprocess.Popen([sys.executable, "-u", str(PLAY), "--first", "human"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "Your move" not in seen:  # wait until it is blocked on input()
        char = proc.stdout.read(1)
        assert char, f"play.py ended before asking for a move: {seen}"
        seen += char
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Final score: you 0, agent 0, draws 0" in out and "Traceback" not in err


def test_play_session_with_injected_io():
    """Two whole games through injected input/output: the human tries cells 1, 2, 3, ... in turn (taken
    ones are refused and asked again), says yes to one more game, then no."""
    tries, again = iter([str(c) for c in range(1, 10)] * 10), iter(["y", "n"])
    lines = []
    score = play.play_session(ev.load_agent(), "agent",
                              input_fn=lambda prompt: next(again if "again" in prompt else tries),
                              output_fn=lines.append)
    assert score["you"] == 0 and sum(score.values()) == 2 and any("is taken" in line for line in lines)
    assert lines[-1] == f"Final score: you 0, agent {score['agent']}, draws {score['draws']}"


# --- training ------------------------------------------------------------------------------------
def test_tiny_training_run(tmp_path):
    (tmp_path / "run").mkdir()  # an existing empty directory is a fine --out
    args = train.parse_args(["--games", "128", "--games-per-update", "32", "--eval-every", "2",
                             "--snapshot-every", "1", "--out", str(tmp_path / "run")])
    summary = train.train(args)
    run_dir = tmp_path / "run"
    for name in ("metrics.csv", "learning_curve.png", "best.pt", "final.pt"):
        assert (run_dir / name).is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert len(rows) == 2 and all(math.isfinite(float(r[k]))
                                  for r in rows for k in ("policy_loss", "value_loss", "entropy"))
    assert (summary["best"]["losing_lines"] >= 0
            and ev.load_agent(run_dir / "best.pt").move([0] * 9) in range(9))


def test_bad_flag_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--games", "-5"])
    assert exit_info.value.code == 2 and "--games must be positive" in capsys.readouterr().err
