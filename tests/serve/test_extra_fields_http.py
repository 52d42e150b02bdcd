"""A model trained with extra columns (``data.extra_columns``) served without Ray (LocalBackend): ``POST /jobs``
carries their values into the new jobs' encoding, a cold-start profile gives the user's, and ``extra`` never
overrides a field of its own."""
from __future__ import annotations

import pandas as pd
import pytest

from convfm.cli.catalog import postings
from convfm.features.fields import PAD, field_columns

pytestmark = pytest.mark.timeout(300)
KEY = "extra-key-0123456789"
AUTH = {"X-API-Key": KEY}


@pytest.fixture()
def service(extra_board, tmp_path, local_service):
    started = local_service(extra_board.entry, tmp_path, KEY)
    return started.client, started.slot


def test_a_posted_job_is_encoded_with_its_extra_values(service):
    client, slot = service
    skill = next(v for v in slot.current.extractor.vocabs["skill"].values[2:] if " " not in v)
    body = {"upsert": [{"job_id": "n1", "title": "Analyst", "extra": {"industry": "Finance", "tags": ["remote"],
                                                                       "REQUIREMENTS": f"<li>{skill}</li>"}},
                       {"job_id": "n2", "title": "Analyst"}]}  # "industry": the file's "Industry", case aside
    assert client.post("/jobs", json=body, headers=AUTH).status_code == 200
    assert client.post("/recommend", json={"user_id": "nobody", "k": 1}).status_code == 200  # applies the delta
    extractor = slot.current.extractor
    columns = field_columns(extractor.feature_map.of_side("job").fields)
    rows = [extractor.job_rows["n1"], extractor.job_rows["n2"]]
    assert extractor.job_catalog.cat[rows, columns["job_industry"][1]].tolist() == [
        extractor.vocabs["extra_industry"].index("finance"), PAD]
    assert extractor.job_catalog.multi[rows[0], columns["job_tags"][1], 0] == extractor.vocabs["extra_tags"].index(
        "remote")
    assert client.get("/jobs/n1").json()["extra"] == {"Industry": "finance", "tags": ["remote"]}  # as read
    assert client.get("/jobs/n2").json()["extra"] == {"Industry": None, "tags": []}
    found = extractor.job_catalog.multi[rows, columns["job_skills"][1]]  # a skill named in the text column alone
    assert extractor.vocabs["skill"].index(skill) in found[0] and extractor.vocabs["skill"].index(skill) not in found[1]


def test_a_profile_gives_the_users_extra_values_and_they_change_the_score(service, extra_board):
    client, _ = service
    job = extra_board.data.extractor.job_ids[1]
    profile = {"skills": ["python"], "location": "Berlin"}
    scores = {}
    for extra in ({"industry": "it"}, {"industry": "finance"}, {}, {"years": "3"}, {"years": "25"}):
        body = {"profile": {**profile, "extra": extra}, "job_ids": [job]}
        response = client.post("/score", json=body)
        assert response.status_code == 200, response.text
        scores[str(extra)] = response.json()["scores"][0]["score"]
    assert len(set(scores.values())) == 5
    same = {"INDUSTRY": "it", "Years": 3}  # keys as the file names them, case and punctuation aside; a JSON number
    body = {"profile": {**profile, "extra": same}, "job_ids": [job]}
    twin = {"profile": {**profile, "extra": {"industry": "it", "years": "3"}}, "job_ids": [job]}
    assert client.post("/score", json=body).json()["scores"] == client.post("/score", json=twin).json()["scores"]
    only_extra = client.post("/recommend", json={"profile": {"extra": {"industry": "it"}}, "k": 3})
    assert only_extra.status_code == 200 and only_extra.json()["cold_start"]


def test_a_posted_jobs_keys_no_model_column_reads_are_kept_and_named(service):
    client, slot = service
    body = {"upsert": [{"job_id": "n1", "extra": {"industry": "IT", "Benefits": "gym", "sector": "x"}},
                       {"job_id": "n2", "extra": {"benefits": "pool"}}]}
    response = client.post("/jobs", json=body, headers=AUTH)
    assert response.status_code == 200 and response.json()["unread_extra"] == ["Benefits", "sector", "benefits"]
    refused = {"upsert": [{"job_id": "n3", "extra": {"tags": "a", "Industry": ["x"]}}]}
    assert client.post("/jobs", json=refused, headers=AUTH).status_code == 422
    assert client.get("/model").json()["catalog_version"] == response.json()["catalog_version"]  # nothing written


def test_a_profiles_text_gives_its_skills(service, extra_board):
    client, slot = service
    skill = next(v for v in slot.current.extractor.vocabs["skill"].values[2:] if " " not in v)
    job = extra_board.data.extractor.job_ids[1]
    scores = [client.post("/score", json={"profile": profile, "job_ids": [job]}).json()["scores"]
              for profile in ({"location": "Berlin", "extra": {"headline": f"I write {skill} daily"}},
                              {"location": "Berlin", "skills": [skill]}, {"location": "Berlin"})]
    assert scores[0] == scores[1] != scores[2]


@pytest.mark.parametrize("path, body, message", [
    ("/recommend", {"profile": {"skills": ["sql"], "extra": {"location": "Paris"}}},
     "extra: ['location'] are profile fields of their own"),
    ("/jobs", {"upsert": [{"job_id": "n1", "extra": {"skills": "sql"}}]}, "extra: ['skills'] are job fields"),
    ("/jobs", {"upsert": [{"job_id": "n1", "extra": {"Industry": {"a": 1}}}]},
     "upsert.0.extra.Industry: Value error, a value must be text, a number or a list of text, got dict"),
    ("/recommend", {"profile": {"skills": ["sql"], "extra": {"sector": "it"}}},
     "profile.extra: this model reads no user column ['sector']; it reads ['Headline', 'industry', 'years']"),
    ("/recommend", {"profile": {"extra": {"industry": ["it", "health"]}}},
     "profile.extra.industry: a category column takes one value, not a list"),
    ("/jobs", {"upsert": [{"job_id": "n1"}, {"job_id": "n2", "extra": {"INDUSTRY": ["it", "health"]}}]},
     "upsert.1.extra.INDUSTRY: a category column takes one value, not a list"),
    ("/jobs", {"upsert": [{"job_id": "n1", "extra": {"requirements": ["sql"]}}]},
     "upsert.0.extra.requirements: a text column takes one value, not a list"),
    ("/jobs", {"upsert": [{"job_id": "n1", "extra": {"Requirements": "<b>x</b>" * 2501}}]},
     "upsert.0.extra.Requirements: Value error, a value takes at most 20000 characters (HTML included), got 20008"),
    ("/jobs", {"upsert": [{"job_id": "n1", "posted_at": "2099-01-01T00:00:00Z"}]},
     "posted_at 2099-01-01T00:00:00 is more than a day ahead: post a scheduled job when it opens"),
    ("/jobs", {"upsert": [{"job_id": "n1", "extra": {"Industry": "x" * 201}}]},
     "upsert.0.extra.Industry: a category value takes at most 200 characters"),
    ("/recommend", {"profile": {"extra": {"industry": "x" * 201}}},
     "profile.extra.industry: a category value takes at most 200 characters"),
    ("/score", {"profile": {"extra": {"Years": "ten"}}, "job_ids": ["j000001"]},
     "profile.extra.Years: 'ten' is not a number"),
])
def test_extra_values_are_checked(service, path, body, message):
    client, _ = service
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert message in response.json()["message"]


def test_catalog_push_sends_the_models_extra_columns_and_no_others(service):
    client, _ = service
    long_text = " ".join(["SQL"] * 1250)  # a text column's value: up to a description's length
    columns = client.get("/model").json()["extra_columns"]["jobs"]
    assert columns == {"Industry": "category", "tags": "list", "Requirements": "text"}
    jobs = pd.DataFrame({"job_id": ["a", "b"], "title": ["x", "y"], "industry": ["IT", None], "Tags": [None, "r"],
                         "requirements": [long_text, ""],
                         "Benefits": ["x" * 5000, ""]})  # not the model's: not sent (it would be a 422)
    sent = postings(jobs, list(columns))
    assert sent == [{"job_id": "a", "extra": {"industry": "IT", "requirements": long_text}, "title": "x"},
                    {"job_id": "b", "extra": {"Tags": "r"}, "title": "y"}]
    assert client.post("/jobs", json={"upsert": sent}, headers=AUTH).status_code == 200
