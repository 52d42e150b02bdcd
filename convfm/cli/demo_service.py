"""The service half of `convfm demo`: serve the published model with Ray Serve and use it over HTTP as a client
would: three queries, then a job posted through ``POST /jobs`` (the live catalog, no retraining) showing up
for a user it suits, then that user's apply (``POST /events``) changing the next answer.

Kept apart from ``convfm.cli.demo`` (data, Train, Tune) because it only speaks HTTP to the running service.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from convfm.data.synth import LEVELS
from convfm.data.synth_vocab import CLUSTERS

KEY_ENV = "CONVFM_DEMO_API_KEY"  # the writing endpoints need a key: the demo makes one for its own service
NEW_JOB_ID = "j-new-0001"
_TITLE_PREFIX = dict(zip(LEVELS, ("Junior ", "", "Senior ", "Lead ")))
StageStarter = Callable[[str], None]


def call(url: str, body: Optional[dict[str, Any]] = None, key: Optional[str] = None) -> dict[str, Any]:
    """POST ``body`` (GET without one) to ``url`` -> the JSON answer; ``key`` goes in X-API-Key."""
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def suited_job(user: pd.Series, now: dt.datetime) -> dict[str, Any]:
    """A ``POST /jobs`` posting written for ``user`` (a users.csv row): the skill cluster the user's skills
    overlap most, their level and city, open for 30 days. Nothing in it was seen in training but its words."""
    skills = str(user["skills"]).split(";")
    cluster = max(CLUSTERS, key=lambda c: len(set(c.skills) & set(skills)))
    listed = ([s for s in skills if s in cluster.skills] + [s for s in cluster.skills if s not in skills])[:5]
    title = f"{_TITLE_PREFIX.get(user['experience_level'], '')}{cluster.titles[0]}"
    return {
        "job_id": NEW_JOB_ID, "title": title, "company": "Newco Labs", "location": user["location"],
        "job_type": "full_time", "experience_level": user["experience_level"], "skills": listed,
        "description": f"Newco Labs is hiring a {title} in {user['location']}. {cluster.blurb} "
                       f"Day to day you will use {' and '.join(listed[:2])}.",
        "salary_min": float(round(cluster.salary * 0.9, -3)), "salary_max": float(round(cluster.salary * 1.15, -3)),
        "posted_at": now.isoformat(), "expires_at": (now + dt.timedelta(days=30)).isoformat(),
    }


def ranked(result: dict[str, Any], marks: dict[str, str]) -> str:
    """One short line per item ("  2. j-new-0001  Junior Frontend Engineer, Newco Labs, Austin  0.612  <- new"),
    ``marks`` adding a note after the job ids it names."""
    lines = []
    for n, item in enumerate(result["items"], 1):
        where = ", ".join(v for v in (item.get("company"), item.get("location")) if v)
        note = f"  <- {marks[item['job_id']]}" if item["job_id"] in marks else ""
        lines.append(f"   {n:2d}. {item['job_id']:<11} {item.get('title') or '':<30.30} {where:<32.32} "
                     f"{item['score']:.3f}{note}")
    return "\n".join(lines) or "   (no jobs)"


def serve_and_query(model_dir: Path, users: pd.DataFrame, test_users: pd.Series, stage: StageStarter) -> None:
    """Stages 5-8: serve ``model_dir`` on the Ray the earlier stages started, query it, post a job, send an
    event, then shut Serve and Ray down (however the block ends)."""
    from convfm.cli.recommend import format_table
    from convfm.cli.serve import free_port, running_service
    from serve.app import build_app
    from serve.config import ServeConfig

    stage(f"serve {model_dir} with Ray Serve on 127.0.0.1 and ask it for recommendations")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the stage prints its own ready line
    key = os.environ.setdefault(KEY_ENV, secrets.token_urlsafe(24))  # the service keeps only its SHA-256
    config = ServeConfig(model=str(model_dir), port=free_port(), num_cpus=0.5, api_key_env=KEY_ENV)
    with running_service(config, build_app(config)) as (url, health):  # on the Ray that trained the model
        print(f"   {url} ready: {health.get('model')} {health.get('version')}")
        user = str(test_users.iloc[0])
        queries = [
            (f"known user {user}", {"user_id": user, "k": 5, "explain": True}),
            ("cold-start profile: python, sql, docker in Chicago", {
                "profile": {"skills": ["python", "sql", "docker"], "location": "Chicago",
                            "experience_level": "mid"}, "k": 5, "explain": True}),
            ("unknown user without a profile", {"user_id": "somebody-new", "k": 5}),
        ]
        for title, body in queries:
            print(f"\n   POST /recommend  {title}")
            print("   " + format_table(call(f"{url}/recommend", body), width=150).replace("\n", "\n   "))

        profile = users.set_index("user_id").loc[user]
        stage("live catalog: a job is posted (POST /jobs) and recommended at once, without retraining")
        query = {"user_id": user, "k": 5, "filters": {"location": profile["location"],
                                                     "experience_level": profile["experience_level"]}}
        answer = post_job(url, key, query, suited_job(profile, dt.datetime.now(dt.timezone.utc)))

        stage(f"feedback: {user} applies to {answer['items'][0]['job_id']} (POST /events); the next answer changes")
        send_event(url, key, query, answer)
        stage("shut down Ray Serve and Ray")


def post_job(url: str, key: str, query: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """Ask, post ``job``, ask again; print both answers with the new job marked. Returns the second answer."""
    user, filters = query["user_id"], query["filters"]
    asked = f"POST /recommend  {user}, filters {json.dumps(filters)}"
    before = call(f"{url}/recommend", query)
    print(f"   {asked}  (catalog version {before.get('catalog_version')})\n{ranked(before, {})}")
    shown = {k: job[k] for k in ("job_id", "title", "location", "experience_level", "skills")}
    posted = call(f"{url}/jobs", {"upsert": [job]}, key)
    print(f"\n   POST /jobs (X-API-Key)  {json.dumps(shown)}\n"
          f"   -> catalog version {posted['catalog_version']}: {posted['upserted']} job added")
    detail = call(f"{url}/jobs/{job['job_id']}")
    print(f"   GET /jobs/{job['job_id']} -> {detail['title']}, {detail['location']}, expires {detail['expires_at']}")
    after = call(f"{url}/recommend", query)
    rank = next((n for n, i in enumerate(after["items"], 1) if i["job_id"] == job["job_id"]), None)
    print(f"\n   {asked}  (catalog version {after.get('catalog_version')})\n{ranked(after, {job['job_id']: 'new'})}")
    print(f"   the posted job is #{rank} for {user}" if rank else
          f"   the posted job is not in {user}'s top {query['k']}: the model rates others higher")
    return after


def send_event(url: str, key: str, query: dict[str, Any], answer: dict[str, Any]) -> None:
    """The user applies to the first job of ``answer`` (citing its impression); print the next answer beside it."""
    user, job = query["user_id"], answer["items"][0]["job_id"]
    event = {"event_id": f"demo-{answer['impression_id'][:12]}", "type": "apply", "user_id": user,
             "job_id": job, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
             "impression_id": answer["impression_id"], "model_version": answer["model_version"]}
    stored = call(f"{url}/events", {"events": [event]}, key)
    print(f"   POST /events (X-API-Key)  apply: {user} -> {job}, impression {answer['impression_id'][:12]}...\n"
          f"   -> {stored['accepted']} event stored in the event log (acknowledged once written)")
    after = call(f"{url}/recommend", query)
    print(f"\n   before the event\n{ranked(answer, {job: 'applied'})}")
    print(f"   after the event: the applied job is excluded (exclude_seen) and the apply joined {user}'s "
          f"history\n{ranked(after, {})}")
    was = {i["job_id"]: i["score"] for i in answer["items"]}
    moved = [f"{i['job_id']} {was[i['job_id']]:.3f} -> {i['score']:.3f}" for i in after["items"] if i["job_id"] in was]
    print(f"   {job} {'is gone' if job not in {i['job_id'] for i in after['items']} else 'is still listed'}; "
          f"scores moved with the history: {', '.join(moved[:3]) or 'no job kept its place'}\n"
          "   (a dismiss would only hide the job: it does not join the history)")
