"""Nothing lost: a checkpoint is saved as one set, so a kill at any instant, a full disk or a
damaged file never costs more than the iterations since the last save, and each bad folder gets
one line that says what to do."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import files
from conftest import losses, workspace

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--dataset=tiny", "--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2",
        "--max_seq_len=32", "--batch_size=4", "--eval_iters=1", "--log_interval=1",
        "--warmup_iters=2", "--learning_rate=3e-3", "--dtype=float32"]
OLD = {"config.json": b'{"iter": 1}', "model.safetensors": b"old weights " * 1000,
       "tokenizer.model": b"tok"}
NEW = {"config.json": b'{"iter": 2}', "model.safetensors": b"new weights " * 1000,
       "tokenizer.model": b"tok", "optimizer.safetensors": b"new moments " * 1000}


class Killed(BaseException):
    """Stands for SIGKILL: once raised, every later file operation fails too, so nothing can
    clean up after it."""


def kill_after(monkeypatch, k):
    """Make the k+1-th file operation (open, write, fsync, rename, delete, mkdir) 'kill' the
    process."""
    count, dead = [0], [False]

    def op(fn):
        def wrapped(*args, **kwargs):
            count[0] += 1
            if dead[0] or count[0] > k:
                dead[0] = True
                raise Killed
            return fn(*args, **kwargs)
        return wrapped
    for name in ("replace", "remove", "rmdir", "makedirs", "fsync", "open"):
        monkeypatch.setattr(os, name, op(getattr(os, name)))
    monkeypatch.setattr(files.shutil, "rmtree", op(files.shutil.rmtree))
    monkeypatch.setattr(files, "open", op(open), raising=False)
    return op


def writers(contents, op):
    def writer(data):
        def write(path):
            with open(path, "wb") as f:
                f.write(data[:len(data) // 2])
                op(lambda: None)()  # a kill can land in the middle of a file, too
                f.write(data[len(data) // 2:])
        return write
    return {name: writer(data) for name, data in contents.items()}


def folder_state(path):
    return {p.name: p.read_bytes() for p in Path(path).iterdir()}


def test_a_kill_at_any_step_of_a_save_or_of_its_recovery_leaves_one_whole_checkpoint(tmp_path,
                                                                                     monkeypatch):
    outcomes, k = set(), 0
    while True:
        out = tmp_path / f"k{k}"
        out.mkdir()
        for name, data in OLD.items():
            (out / name).write_bytes(data)
        with monkeypatch.context() as m:
            op = kill_after(m, k)
            try:
                files.save_checkpoint(str(out), writers(NEW, op))
                finished = True
            except Killed:
                finished = False
        # the next start recovers, and may itself be killed at any step of that: then the one
        # after recovers
        for j in range(20):
            with monkeypatch.context() as m:
                kill_after(m, j)
                try:
                    files.finish_checkpoint(str(out))
                    break
                except Killed:
                    pass
        files.finish_checkpoint(str(out))
        state = folder_state(out)
        assert state in (OLD, NEW), (k, sorted(state))  # never a mix, never a half-written file
        outcomes.add("new" if state == NEW else "old")
        if finished:
            assert state == NEW
            break
        k += 1
    # the kills landed before and after the set was complete
    assert k > 10 and outcomes == {"old", "new"}


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    for name, data in OLD.items():
        (tmp_path / name).write_bytes(data)

    def no_space(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    with pytest.raises(OSError) as e:
        files.save_checkpoint(str(tmp_path), {**writers(NEW, lambda f: f),
                                              "optimizer.safetensors": no_space})
    assert folder_state(tmp_path) == OLD  # and no .saving/ left behind
    assert "disk holding" in files.disk_full_hint(e.value, str(tmp_path)) and \
        "is full" in files.disk_full_hint(e.value, str(tmp_path))


def run(*args, cwd, ok=True, code=None):
    cmd = [sys.executable, *(["-c", code] if code else [str(ROOT / "train.py")]), *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def error_line(r):
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("Overriding: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data):
    return workspace(tmp_path_factory, tiny_data)


def test_killing_a_real_run_at_random_moments_loses_nothing_but_the_last_iterations(work):
    # Every iteration saves, so kills land in every part of a step and of a save. After each kill
    # the run resumes; at the end it must be the run that never stopped: the same losses, one log
    # line per iteration, the same bytes.
    n = 150
    common = [*TINY, f"--max_iters={n}", "--eval_interval=1", f"--lr_decay_iters={n}",
              "--peak_flops=1e12"]
    start = time.perf_counter()
    run("--out_dir=straight", *common, cwd=work)
    # kills at moments in proportion, however fast this machine is
    whole = time.perf_counter() - start
    rng, kills, lost, out = random.Random(0), 0, [], work / "killed"
    for attempt in range(6):  # killed five times, then left to finish
        resume = ["--init_from=resume"] if (out / "config.json").exists() else []
        before = json.loads((out / "config.json").read_text())["train_state"]["iter"] if resume \
            else 0
        p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--out_dir=killed", *common,
                              *resume],
                             cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            p.wait(timeout=rng.uniform(0.1, 0.25) * whole if attempt < 5 else 300)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            kills += 1
        err = p.communicate()[1]
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, err
        saved = json.loads((out / "config.json").read_text())["train_state"]["iter"] \
            if (out / "config.json").exists() else 0
        logged = [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()
                  if line.strip().endswith("}")] if (out / "log.jsonl").exists() else [0]
        lost.append(max(logged, default=0) - saved)
        assert saved >= before
    assert p.returncode == 0
    assert kills >= 4, "the kills should land during the run, not after it"
    straight, killed = losses(work / "straight"), losses(work / "killed")
    records = [json.loads(line)
               for line in (work / "killed" / "log.jsonl").read_text().splitlines()]
    # no line lost or repeated
    assert [r["iter"] for r in records if "loss" in r] == list(range(1, n + 1))
    assert killed == straight
    assert (work / "killed" / "model.safetensors").read_bytes() == \
        (work / "straight" / "model.safetensors").read_bytes()
    assert not (work / "killed" / files.SAVING).exists()
    print(f"{kills} kills, every resume worked, iterations lost per kill: {lost}")


FULL_DISK = """
import builtins, os, runpy, sys
real_open, saves = builtins.open, []
def open_(path, mode="r", *args, **kwargs):  # the second checkpoint's weights meet a full disk
    if str(path).endswith(os.path.join(".saving", "model.safetensors")) and "w" in mode:
        saves.append(path)
        if len(saves) > 1:
            return real_open("/dev/full", mode, *args, **kwargs)
    return real_open(path, mode, *args, **kwargs)
builtins.open = open_
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as python train.py would
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"),
                    reason="needs /dev/full to make a write fail as on a full disk")
def test_a_full_disk_keeps_the_last_checkpoint_and_says_where(work):
    common = [*TINY, "--max_iters=6", "--eval_interval=3", "--out_dir=full"]
    r = run(str(ROOT / "train.py"), *common, cwd=work, ok=False, code=FULL_DISK)
    message = error_line(r)
    assert "the checkpoint of iteration 6 could not be written: the disk holding" in message
    assert "is full" in message and "full/ keeps iteration 3" in message and \
        "--init_from=resume" in message
    assert json.loads((work / "full" / "config.json").read_text())["train_state"]["iter"] == 3
    assert not (work / "full" / files.SAVING).exists()
    r = run(*common, "--init_from=resume", cwd=work)  # and it resumes from there
    assert "iterations 3 -> 6" in r.stdout


def test_damaged_checkpoint_folders_get_one_line_that_keeps_the_training(work):
    run(*TINY, "--max_iters=2", "--eval_interval=2", "--out_dir=damaged", cwd=work)
    folder = work / "damaged"
    config = (folder / "config.json").read_bytes()
    moments = (folder / "optimizer.safetensors").read_bytes()
    (folder / "config.json").write_bytes(config[:-20])
    for script in ("train.py", "generate.py"):
        args = [*TINY, "--out_dir=damaged", "--init_from=resume", "--max_iters=4"] \
            if script == "train.py" else ["--out_dir=damaged"]
        r = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=work,
                           capture_output=True, text=True)
        message = error_line(r)
        assert "damaged/config.json is not valid JSON" in message and "restore it" in message
        assert "scratch" not in message
    (folder / "config.json").write_bytes(config)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").unlink()
    message = error_line(run(*TINY, "--out_dir=damaged", "--init_from=resume", "--max_iters=4",
                             cwd=work, ok=False))
    assert "no model.safetensors" in message
    (folder / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    message = error_line(run(*TINY, "--out_dir=damaged", "--init_from=resume", "--max_iters=4",
                             cwd=work, ok=False))
    assert "model.safetensors cannot be read" in message
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.model").rename(folder / "tokenizer.model.away")
    message = error_line(run(*TINY, "--out_dir=damaged", "--init_from=resume", "--max_iters=4",
                             cwd=work, ok=False))
    assert "damaged/tokenizer.model is missing, and resuming needs it" in message
    (folder / "tokenizer.model.away").rename(folder / "tokenizer.model")
    tokenizer = (folder / "tokenizer.model").read_bytes()
    (folder / "tokenizer.model").write_bytes(b"xx")
    r = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--out_dir=damaged"],
                       cwd=work, capture_output=True, text=True)  # eval.py and export.py read it so
    assert "damaged/tokenizer.model cannot be read" in error_line(r)
    (folder / "tokenizer.model").write_bytes(tokenizer)
    (folder / "optimizer.safetensors").write_bytes(b"garbage")
    message = error_line(run(*TINY, "--out_dir=damaged", "--init_from=resume", "--max_iters=4",
                             cwd=work, ok=False))
    assert "damaged/optimizer.safetensors cannot be read" in message
    (folder / "optimizer.safetensors").write_bytes(moments)
    r = run(*TINY, "--out_dir=damaged", "--init_from=resume", "--max_iters=4",
            cwd=work)  # nothing was lost
    assert "iterations 2 -> 4" in r.stdout
    (folder / "optimizer.safetensors").write_bytes(moments)  # iteration 2's, beside 4's weights
    message = error_line(run(*TINY, "--out_dir=damaged", "--init_from=resume", "--max_iters=6",
                             cwd=work, ok=False))
    assert "optimizer.safetensors is from iteration 2, config.json from 4" in message


def test_a_reader_never_takes_a_folder_whose_save_was_cut_short(work):
    # Killed after the new set was marked complete but before all of it moved into place:
    # generate.py (and export.py) must not read a mix of two checkpoints; train.py
    # --init_from=resume finishes the move.
    run(*TINY, "--max_iters=2", "--eval_interval=1", "--out_dir=cut", cwd=work)
    folder = work / "cut"
    (folder / files.SAVING).mkdir()
    (folder / files.SAVING / "config.json").write_bytes((folder / "config.json").read_bytes())
    (folder / files.SAVING / files.COMPLETE).write_bytes(b"")
    r = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--out_dir=cut"], cwd=work,
                       capture_output=True, text=True)
    assert "a save into 'cut' was cut short" in error_line(r) and \
        "--init_from=resume" in error_line(r)
    r = run(*TINY, "--max_iters=3", "--eval_interval=1", "--out_dir=cut", "--init_from=resume",
            cwd=work)
    assert "iterations 2 -> 3" in r.stdout and not (folder / files.SAVING).exists()


def test_a_new_run_never_replaces_a_checkpoint_it_was_not_told_to(work):
    run(*TINY, "--max_iters=2", "--eval_interval=2", "--out_dir=precious", cwd=work)
    before = folder_state(work / "precious")
    message = error_line(run(*TINY, "--max_iters=2", "--eval_interval=2", "--out_dir=precious",
                             cwd=work, ok=False))
    assert "precious/ already holds a checkpoint" in message and "--init_from=resume" in message
    assert folder_state(work / "precious") == before  # log.jsonl included


def test_a_new_run_takes_a_folder_whose_first_save_was_cut_short(work):
    # Stopped at once (a second Ctrl-C) while the first save had written only the weights: there
    # is no checkpoint to keep, so a new run starts there, and a resume says there is none.
    (work / "first" / files.SAVING).mkdir(parents=True)
    (work / "first" / files.SAVING / "model.safetensors").write_bytes(b"part of the weights")
    assert "no checkpoint in 'first'" in error_line(
        run(*TINY, "--max_iters=1", "--out_dir=first", "--init_from=resume", cwd=work, ok=False))
    (work / "first" / files.SAVING).mkdir()
    (work / "first" / files.SAVING / "model.safetensors").write_bytes(b"part of the weights")
    run(*TINY, "--max_iters=1", "--eval_interval=1", "--out_dir=first", cwd=work)
    assert (work / "first" / "config.json").exists()
    assert not (work / "first" / files.SAVING).exists()
