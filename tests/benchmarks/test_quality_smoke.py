"""benchmarks/quality.py runs end to end on a tiny market and prints, per protocol, its protocol line and the
model / baselines / oracle table, then the ablation table (static features, + history, + recency, all three, and
all three + popularity with --popularity-days)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


def test_tiny_run_prints_both_protocols_with_model_baselines_and_oracle():
    done = subprocess.run([sys.executable, str(SCRIPT), "--users", "200", "--jobs", "100", "--interactions", "3000",
                           "--epochs", "1", "--negatives", "9", "--ablation", "--popularity-days", "7"], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    headers = [line.split(":")[0] for line in lines if ": 200 users, 100 jobs, 3000 interactions" in line]
    assert headers == ["static features", "+ history", "+ recency", "all three", "all three + popularity"]
    for line in (line for line in lines if ": 200 users, 100 jobs, 3000 interactions" in line):
        curve = line.split("; val AUC per epoch ")[1].split()  # one validation AUC per epoch trained (1 here)
        assert len(curve) == 1 and 0.0 <= float(curve[0]) <= 1.0
        # the kept model is the weight average; a tiny market keeps the whole weight decay
        assert "learning rate 0.004, weight decay 5 applied, ema_decay 0.99;" in line
    assert "popularity_days 7.0" in lines[[i for i, line in enumerate(lines) if line.startswith("all three + ")][0]]
    table = lines[lines.index("ablation (live protocol, test split):") + 1:]
    assert table[0] == "| method | hr@10 | ndcg@10 | mrr | roc_auc |"
    assert [row.split(" | ")[0][2:] for row in table[2:]] == [*headers, "popularity", "recent_popularity", "newest",
                                                               "oracle"]
    lines = lines[max(i for i, line in enumerate(lines) if line.startswith("all three + popularity: ")):]  # the last
    starts = [i for i, line in enumerate(lines) if line.startswith("protocol: ")]
    assert [lines[i].split(":")[1].strip() for i in starts] == ["live", "sampled"]
    for i in starts:
        assert lines[i + 1].split()[:3] == ["metric", "model", "popularity"] and lines[i + 1].split()[-1] == "oracle"
    # the market unfolds in time: every test positive is on a job live at its time, so every method ranks
    assert lines[starts[0] + 1].split() == ["metric", "model", "popularity", "recent_popularity", "newest", "oracle"]
    assert "skipped {'not_in_catalog': 0, 'not_live': 0, " in lines[starts[0]]  # (a tiny catalog: some users
    # have seen every live job, sampled negatives included, and have no candidates)
    assert any(line.startswith("hr@10") for line in lines[starts[0]:starts[1]])
    for i in starts:
        auc = next(line.split() for line in lines[i:] if line.startswith("roc_auc"))
        assert all(0.0 <= float(value) <= 1.0 for value in (auc[1], auc[2], auc[-1]))  # model, popularity, oracle
    sampled = lines[starts[1]:]
    assert lines[starts[1]].startswith("protocol: sampled: last positive per user vs 9 sampled unseen jobs")
    assert any(line.startswith("hr@10") for line in sampled)


def test_model_and_data_overrides_reach_the_run_and_bad_ones_fail_before_any_work():
    done = subprocess.run([sys.executable, str(SCRIPT), "--users", "200", "--jobs", "100", "--interactions", "3000",
                           "--epochs", "1", "--negatives", "9", "--model", "history_match=false", "--model",
                           "embedding_dim=8", "--data", "train_negative_ratio=3"], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "; model history_match=false, embedding_dim=8; history_length 20" in done.stdout
    assert "negative_ratio 2, train_negative_ratio 3;" in done.stdout
    for flag, bad, message in (("--model", "bogus=1", "--model: unknown key(s) ['bogus'] for ModelConfig"),
                               ("--model", "skill_match", "--model takes KEY=VALUE, got ['skill_match']"),
                               ("--model", "embedding_dim=0", "embedding_dim"),
                               ("--data", "train_negative_ratio=1", "train_negative_ratio: must be an integer in "
                                "[negative_ratio=2, 100], got 1"),
                               ("--data", "seed=3", "--data: ['seed'] are set by this benchmark's own flags")):
        done = subprocess.run([sys.executable, str(SCRIPT), flag, bad], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
