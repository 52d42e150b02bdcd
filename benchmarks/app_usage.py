"""A context-aware app-usage log shaped like the public mobile-app CTR benchmark (Frappe): ids carry the signal.

Issue 13's generalization check ran on such a log. There every test user and app is also in training, app
popularity is heavy-tailed, and each logged use (user, app, context) is paired with two random apps in the same
user and context as negatives, so a model has to memorize users and apps; the job market's ids mostly do not
carry over, and the defaults tuned on it (weight decay above all) must not cost this kind of data.

Shape: 1,000 users, 4,000 apps over 20 topics; the ten categorical fields of Frappe (user, item, daytime,
weekday, isweekend, homework, cost, weather, country, city); ~97k distinct positive rows, two negatives each.
Each user has a few apps of their own (median 15, drawn by popularity, the user's topic shares and a small
user x app taste); a use draws a context, then, 80% of the time, one of the user's own apps, else any app, by
softmax(that static logit + the app topic's daytime and home/work affinity). ``truth`` is the generator's
P(label 1 | row): the app's chance q under that mixture against two uniform draws, q / (q + 2 / apps).

    .venv/bin/python benchmarks/app_usage.py OUT_DIR [--users 1000 --apps 4000 --uses 100000 --seed 0]

writes OUT_DIR/app_usage.csv, OUT_DIR/app_usage.yaml (a table spec for ``convfm train --table``) and
OUT_DIR/truth.csv (one ``truth`` per row, in the table's order), and prints the truth's ROC-AUC and log loss.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")
DAYTIMES = ("sunrise", "morning", "noon", "afternoon", "sunset", "evening", "night")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
HOMEWORK = ("home", "work", "unknown")
WEATHER = ("sunny", "cloudy", "rainy", "foggy", "drizzle", "snowy", "stormy", "sleet", "unknown")
COUNTRIES, CITIES, TOPICS = 80, 233, 20
EXPLORE = 0.2  # the share of uses drawn from every app, not the user's own few
NEGATIVES = 2  # random apps per logged use, same user and context (as Frappe's benchmark split pairs them)


def generate(users: int = 1000, apps: int = 4000, uses: int = 100_000, seed: int = 0) -> pd.DataFrame:
    """The log (its FIELDS as strings, ``label`` 0/1, ``truth`` float), positives and their negatives shuffled."""
    rng = np.random.default_rng(seed)
    topic = rng.choice(TOPICS, apps, p=_zipf(TOPICS, 0.7))
    log_pop = np.log(_zipf(apps, 0.7))[rng.permutation(apps)]
    paid = rng.random(apps) < 0.1
    log_pop[paid] -= 1.0
    share = rng.dirichlet(np.full(TOPICS, 0.3), users)  # (users, topics)
    day_affinity = rng.normal(0, 0.7, (TOPICS, len(DAYTIMES)))
    place_affinity = rng.normal(0, 0.7, (TOPICS, len(HOMEWORK)))
    user_taste, app_taste = rng.normal(0, 0.7, (users, 4)), rng.normal(0, 0.7, (apps, 4))
    city_country = rng.choice(COUNTRIES, CITIES, p=_zipf(COUNTRIES, 1.2))
    home_city = rng.choice(CITIES, users, p=_zipf(CITIES, 0.9))
    activity = rng.lognormal(0, 1.0, users)

    user = rng.choice(users, uses, p=activity / activity.sum())
    daytime, weekday = rng.integers(0, len(DAYTIMES), uses), rng.integers(0, len(WEEKDAYS), uses)
    place = rng.choice(len(HOMEWORK), uses, p=[0.55, 0.3, 0.15])
    weather = rng.choice(len(WEATHER), uses, p=_zipf(len(WEATHER), 1.0))
    city = np.where(rng.random(uses) < 0.9, home_city[user], rng.integers(0, CITIES, uses))
    log_share = np.log(share + 1e-3) * 2.0  # (users, topics)
    static = log_pop[None, :] + log_share[:, topic] + user_taste @ app_taste.T  # (users, apps)
    kept = np.argsort(static - np.log(-np.log(rng.random(static.shape))), axis=1)[:, ::-1]  # Gumbel top-k order
    size = np.clip(np.round(rng.lognormal(np.log(15), 0.7, users)), 2, apps).astype(np.int64)
    own = np.zeros((users, apps), bool)  # each user's own apps: the first `size` of a draw without replacement
    own[np.repeat(np.arange(users), size), kept[np.arange(apps)[None, :] < size[:, None]]] = True
    item, log_q = np.empty(uses, np.int64), np.empty(uses)
    negative_item, negative_log_q = np.empty((uses, NEGATIVES), np.int64), np.empty((uses, NEGATIVES))
    explore = rng.random(uses) < EXPLORE
    for lo in range(0, uses, 2000):  # (rows, apps) log-probabilities a chunk at a time
        part = slice(lo, lo + 2000)
        z = (static[user[part]] + day_affinity[topic][:, daytime[part]].T + place_affinity[topic][:, place[part]].T)
        z_all, z_own = _log_softmax(z), _log_softmax(np.where(own[user[part]], z, -np.inf))
        log_mix = np.logaddexp(np.log(EXPLORE) + z_all, np.log1p(-EXPLORE) + z_own)
        rows = np.arange(len(z))
        drawn_from = np.where(explore[part][:, None], z_all, z_own)
        item[part] = np.argmax(drawn_from - np.log(-np.log(rng.random(z.shape))), axis=1)  # Gumbel-max draw
        log_q[part] = log_mix[rows, item[part]]
        negative_item[part] = rng.integers(0, apps, (len(z), NEGATIVES))
        negative_log_q[part] = log_mix[rows[:, None], negative_item[part]]
    context = pd.DataFrame({"use": np.arange(uses), "user": user, "daytime": daytime, "weekday": weekday,
                            "place": place, "weather": weather, "city": city})
    positive = context.assign(item=item, log_q=log_q, label=1)
    positive = positive.drop_duplicates([c for c in positive if c not in ("use", "log_q")])  # distinct uses
    negative = context.loc[positive["use"].repeat(NEGATIVES)].assign(
        item=negative_item[positive["use"]].reshape(-1), log_q=negative_log_q[positive["use"]].reshape(-1), label=0)
    frame = pd.concat([positive, negative], ignore_index=True).sample(frac=1.0, random_state=seed)
    q = np.exp(frame["log_q"].to_numpy())
    return pd.DataFrame({
        "user": "u" + frame["user"].astype(str), "item": "a" + frame["item"].astype(str),
        "daytime": np.array(DAYTIMES, object)[frame["daytime"]],
        "weekday": np.array(WEEKDAYS, object)[frame["weekday"]],
        "isweekend": np.where(frame["weekday"] >= 5, "weekend", "workday"),
        "homework": np.array(HOMEWORK, object)[frame["place"]],
        "cost": np.where(paid[frame["item"]], "paid", "free"), "weather": np.array(WEATHER, object)[frame["weather"]],
        "country": "c" + city_country[frame["city"]].astype(str), "city": "t" + frame["city"].astype(str),
        "label": frame["label"].to_numpy(), "truth": q / (q + NEGATIVES / apps)})


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def write(out_dir: Path, frame: pd.DataFrame) -> Path:
    """The log as app_usage.csv, its truth as truth.csv and a table spec (app_usage.yaml, returned) beside them;
    the split is Frappe's usual 7 : 2 : 1 at random."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.drop(columns="truth").to_csv(out_dir / "app_usage.csv", index=False)
    frame[["truth"]].to_csv(out_dir / "truth.csv", index=False)
    spec = {"kind": "table", "path": "app_usage.csv", "label": "label", "categorical": list(FIELDS),
            "split": "random", "valid_fraction": 0.2, "test_fraction": 0.1, "seed": 0}
    (out_dir / "app_usage.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out_dir / "app_usage.yaml"


def truth_scores(frame: pd.DataFrame) -> tuple[float, float]:
    """(ROC-AUC, log loss) of the generator's own probability over every row: the ceiling."""
    from sklearn.metrics import log_loss, roc_auc_score
    return (float(roc_auc_score(frame["label"], frame["truth"])), float(log_loss(frame["label"], frame["truth"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=4000)
    parser.add_argument("--uses", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frame = generate(args.users, args.apps, args.uses, args.seed)
    spec = write(args.out_dir, frame)
    auc, loss = truth_scores(frame)
    print(f"{len(frame)} rows ({int(frame['label'].sum())} positive), {frame['user'].nunique()} users, "
          f"{frame['item'].nunique()} apps; spec {spec}; the truth's ROC-AUC {auc:.4f}, log loss {loss:.4f}")


if __name__ == "__main__":
    main()
