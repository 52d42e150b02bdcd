"""A job board's own columns (``data.extra_columns``): checked config, loading, fields over shared vocabularies,
the profile-match pair they add, an exact fast path, the artifact round trip, the live catalog and warm starts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convfm.config import DataConfig, ModelConfig
from convfm.data.prepare import prepare_data
from convfm.data.synth import generate_market, write_market
from convfm.errors import ConfigError, DataValidationError
from convfm.features.fields import PAD, UNK, field_columns
from convfm.features.jobs import load_extractor
from convfm.model.network import ConvFM
from convfm.model.ranking import CatalogRanker
from convfm.store.live_catalog import Delta, jobs_after, upserted_jobs


@pytest.mark.parametrize("extra, message", [
    ({"jobs": {"location": "category"}}, "extra_columns.jobs.location: 'location' is read as a canonical jobs"),
    ({"jobs": {"Type": "category"}}, "its field name job_type is a built-in field's"),
    ({"jobs": {"Companies": "list"}}, "its field name job_companies is a built-in field's"),  # history_companies
    ({"jobs": {"Level": "category", "level ": "category"}}, "its field name job_level is column 'Level''s"),
    ({"jobs": {"salary band": "float"}}, "kind must be one of ['category', 'list', 'number', 'text'], got 'float'"),
    ({"events": {"x": "category"}}, "extra_columns.events: unknown table 'events'"),
    ({"jobs": {"--": "category"}}, "a column name needs a letter or digit"),
    ({"jobs": {"tags": "list"}, "users": {"Tags": "category"}}, "'tags' (list) and 'Tags' (category) share one"),
])
def test_a_bad_declaration_is_refused_naming_the_entry(extra, message):
    with pytest.raises(ConfigError) as error:
        DataConfig(extra_columns=extra)
    assert message in str(error.value)


def test_a_text_column_has_no_field_name_or_vocabulary_to_clash():
    declared = {"jobs": {"Text": "text", "Skills": "text"}, "users": {"text": "category"}}  # other kinds, one slug
    assert DataConfig(extra_columns=declared).extra_columns == declared
    with pytest.raises(ConfigError, match="its field name job_notes is column 'Notes''s"):
        DataConfig(extra_columns={"jobs": {"Notes": "text", "notes": "category"}})  # one slug, one column


def test_a_column_the_mapping_reads_as_canonical_is_not_an_extra_one():
    with pytest.raises(ConfigError, match="'City' is read as a canonical jobs column"):
        DataConfig(columns={"jobs": {"location": "City"}}, extra_columns={"jobs": {"City": "category"}})
    with pytest.raises(ConfigError, match="only for kind jobs"):
        DataConfig(kind="table", categorical=("a",), extra_columns={"jobs": {"x": "category"}})


def test_a_declared_column_missing_from_its_file_is_named(extra_board, tmp_path):
    with pytest.raises(DataValidationError, match=r"jobs.csv: missing column\(s\) \['sector'\] listed in "
                                                  r"extra_columns.jobs"):
        prepare_data(DataConfig(path=str(extra_board.root), extra_columns={"jobs": {"sector": "category"}}))
    write_market(generate_market(users=50, jobs=30, interactions=300, seed=1), tmp_path)
    (tmp_path / "users.csv").unlink()
    with pytest.raises(DataValidationError, match=r"no users file, but extra_columns.users lists \['industry'\]"):
        prepare_data(DataConfig(path=str(tmp_path), extra_columns={"users": {"industry": "category"}}))


def test_a_number_is_standardised_with_a_missing_flag_and_a_bad_cell_is_refused(extra_board, tmp_path):
    extractor = extra_board.data.extractor
    spec = {f.name: f for f in extractor.feature_map.fields}["user_years"]
    assert (spec.kind, spec.width) == ("dense", 2)
    years = pd.read_csv(extra_board.root / "users.csv")["years"]
    mean, spread = extractor._extra.stats["user_years"]
    assert mean == pytest.approx(years.mean()) and spread == pytest.approx(years.std(ddof=0))
    encoded = extractor.transform_users(pd.DataFrame({"user_id": ["a", "b", "c"], "years": ["10", "", "1e9"]}))
    columns = field_columns(extractor.feature_map.of_side("user").fields)["user_years"][1]
    assert encoded.dense[:, columns].tolist() == [[pytest.approx((10 - mean) / spread), 0.0], [0.0, 1.0], [5.0, 0.0]]
    for name in ("jobs.csv", "interactions.csv"):
        (tmp_path / name).write_text((extra_board.root / name).read_text())
    users = pd.read_csv(extra_board.root / "users.csv").astype({"years": object})
    users.loc[3, "years"] = "ten"
    users.to_csv(tmp_path / "users.csv", index=False)
    with pytest.raises(DataValidationError, match=r"users.csv: column 'years', row 4: 'ten' is not a number"):
        prepare_data(DataConfig(path=str(tmp_path), extra_columns=extra_board.extra))


def test_a_number_field_starts_as_small_as_an_embedding_row(extra_board):
    """At nn.Linear's default (~0.7 for 2 inputs) three noise numbers cost 0.03 ROC-AUC on a real-shaped log."""
    fmap = extra_board.data.extractor.feature_map
    model = ConvFM(ModelConfig(), fmap)
    for part in (model.embedding, model.linear):
        weights = {f.name: layer.weight for f, layer in zip(fmap.of_kind("dense"), part.dense)}
        assert float(weights["user_years"].detach().abs().max()) < 0.1 < float(weights["text"].detach().abs().max())


def test_each_column_is_a_field_and_a_shared_name_shares_its_vocabulary(extra_board):
    extractor = extra_board.data.extractor
    fields = {f.name: f for f in extractor.feature_map.fields}
    assert (fields["user_industry"].side, fields["job_industry"].side) == ("user", "job")
    assert fields["user_industry"].vocab == fields["job_industry"].vocab == "extra_industry"
    assert fields["job_tags"].kind == "multi" and fields["job_tags"].vocab == "extra_tags"
    assert set(extractor.vocabs["extra_industry"].values) >= {"it", "finance", "health"}  # normalised as categories
    encoded = extractor.transform_jobs(pd.DataFrame({"job_id": ["a", "b", "c"], "Industry": ["IT", "", "Mining"],
                                                     "tags": ["python;remote", "", "new"]}))
    column = field_columns(extractor.feature_map.of_side("job").fields)["job_industry"][1]
    vocab = extractor.vocabs["extra_industry"]
    assert encoded.cat[:, column].tolist() == [vocab.index("it"), PAD, UNK]  # missing is padding, unseen unknown
    tags = field_columns(extractor.feature_map.of_side("job").fields)["job_tags"][1]
    assert sorted(encoded.multi[0, tags][encoded.multi[0, tags] != PAD].tolist()) == sorted(
        extractor.vocabs["extra_tags"].lookup(["python", "remote"]).tolist())
    assert [(p.user, p.job) for p in extra_board.model.profile_match.pairs][-1] == ("user_industry", "job_industry")


def test_a_text_column_is_read_with_the_title_and_description_not_as_a_field(extra_board, tmp_path):
    extractor = extra_board.data.extractor
    assert extractor._text_columns == ("title", "description", "Requirements")
    assert not [f.name for f in extractor.feature_map.fields if "requirements" in f.name]
    skills = extractor.vocabs["skill"]
    skill = next(v for v in skills.values[2:] if " " not in v)
    columns = field_columns(extractor.feature_map.of_side("job").fields)
    dense = columns["text"][1]

    def encoded(**extra: str) -> tuple[list[int], np.ndarray]:
        table = extractor.transform_jobs(pd.DataFrame({"job_id": ["x"], "title": ["Clerk"], **{k: [v] for k, v in
                                                                                                extra.items()}}))
        found = table.multi[0, columns["job_skills"][1]]
        return found[found != PAD].tolist(), table.dense[0, dense]

    plain_skills, plain_text = encoded()
    html = f"<p>Must know <b>{skill.upper()}</b></p>"
    for key in ("Requirements", "requirements"):  # a service's extra key, case aside
        found, text = encoded(**{key: html})
        assert skills.index(skill) in found and skills.index(skill) not in plain_skills
        assert not np.allclose(text, plain_text)
    extractor.save(tmp_path / "extractor")
    loaded = load_extractor(tmp_path / "extractor")
    frame = pd.DataFrame({"job_id": ["x"], "Requirements": [html]})
    assert np.array_equal(loaded.transform_jobs(frame).dense, extractor.transform_jobs(frame).dense)


def test_text_is_searched_for_the_skills_columns_values_and_without_them_a_user_text_is_refused():
    from convfm.features.jobs import JobFeatureExtractor

    jobs = pd.DataFrame({"job_id": ["a", "b"], "title": ["SQL analyst", "Cook"], "Requirements": ["python", ""]})
    users = pd.DataFrame({"user_id": ["u"], "Headline": ["python and sql"]})
    fitted = JobFeatureExtractor(extra_columns={"jobs": {"Requirements": "text"}}).fit(jobs, users_df=users)
    assert fitted._text_columns == ("title", "Requirements") and "skill" not in fitted.vocabs  # nothing to find
    assert not {"job_skills", "user_skills"} & {f.name for f in fitted.feature_map.fields}  # no padding-only field
    for empty in (jobs, jobs.assign(skills="")):  # no skills column, or one that names none
        with pytest.raises(ConfigError, match=r"extra_columns.users: text column\(s\) \['Headline'\] give the "
                                              r"skills found in them, but no skills column .* names a skill, .*: add "
                                              r"a ';'-separated skills column to the jobs or users file, or drop"):
            JobFeatureExtractor(extra_columns={"users": {"Headline": "text"}}).fit(empty, users_df=users)
    with pytest.raises(ConfigError, match="skills_from_text is off"):
        JobFeatureExtractor(skills_from_text=False, extra_columns={"users": {"Headline": "text"}}).fit(
            jobs.assign(skills="sql"), users_df=users)


def test_the_fitted_catalogs_say_what_each_column_holds(extra_board):
    extractor = extra_board.data.extractor
    read = extractor.extra_summary()
    jobs, users = (pd.read_csv(extra_board.root / f"{t}.csv") for t in ("jobs", "users"))
    assert read["jobs.Industry"] == {"kind": "category", "values": len(extractor.vocabs["extra_industry"].values),
                                     "without_value": pytest.approx(jobs["Industry"].isna().mean(), abs=1e-4)}
    assert read["users.years"] == {"kind": "number", "without_value": pytest.approx(users["years"].isna().mean(),
                                                                                     abs=1e-4)}
    assert read["jobs.tags"]["without_value"] == 0.0 and "jobs.Requirements" not in read  # text: no field
    assert read["users.skills"]["kind"] == "skills, text ['Headline'] included"
    assert read["jobs.skills"]["kind"] == "skills, text ['Requirements'] included"


def test_an_encoded_row_decodes_to_what_the_model_reads(extra_board):
    extractor = extra_board.data.extractor
    users = pd.read_csv(extra_board.root / "users.csv").set_index("user_id")
    for user in extractor.user_ids[1:30]:
        read = extractor._extra.decode(extractor._static_fields("user"), extractor.user_catalog,
                                       extractor.user_rows[user], extractor.vocabs)
        years = users.loc[user, "years"]
        assert read["industry"] == users.loc[user, "industry"].strip().lower()
        assert read["years"] is None if np.isnan(years) else read["years"] == pytest.approx(years, abs=1e-4)
        assert "Headline" not in read  # text: not kept


def test_a_users_text_column_gives_the_skills_found_in_it(extra_board, tmp_path):
    extractor = extra_board.data.extractor
    assert not [f.name for f in extractor.feature_map.fields if "headline" in f.name]
    skills = extractor.vocabs["skill"]
    skill = next(v for v in skills.values[2:] if " " not in v)
    column = field_columns(extractor.feature_map.of_side("user").fields)["user_skills"][1]

    def found(frame: pd.DataFrame) -> list[int]:
        lists = extractor.transform_users(frame).multi[0, column]
        return lists[lists != PAD].tolist()

    assert found(pd.DataFrame({"user_id": ["x"], "Headline": [f"<b>{skill.upper()}</b> and more"]})) == [
        skills.index(skill)]
    assert found(pd.DataFrame({"user_id": ["x"], "headline": [skill]})) == [skills.index(skill)]  # a service's key
    other = next(v for v in skills.values[2:] if v != skill)
    assert sorted(found(pd.DataFrame({"user_id": ["x"], "skills": [other], "Headline": [skill]}))) == sorted(
        skills.lookup([skill, other]).tolist())  # joined to the skills column
    assert found(pd.DataFrame({"user_id": ["x"], "Headline": ["nothing known"]})) == []
    extractor.save(tmp_path / "extractor")
    frame = pd.DataFrame({"user_id": ["x"], "Headline": [skill]})
    assert np.array_equal(load_extractor(tmp_path / "extractor").transform_users(frame).multi,
                          extractor.transform_users(frame).multi)


def test_a_users_recent_jobs_give_their_extra_values_as_history_with_a_history_match_term(extra_board):
    extractor = extra_board.data.extractor
    jobs = pd.read_csv(extra_board.root / "jobs.csv").set_index("job_id")
    recent = [j for j in extractor.job_ids[1:] if isinstance(jobs.loc[j, "Industry"], str)][:3]
    recent = [recent[0], recent[1], recent[0]]  # most recent first; the first one's industry counts twice
    encoded = extractor.encode_history(np.array([recent + [""] * (extractor.history_length - 3)], dtype=object),
                                       np.array([3]))
    columns = field_columns([f for f in extractor.feature_map.fields if f.side == "user" and f.kind == "multi"
                             and f.name.startswith("history_")])
    industries = encoded.multi[0, columns["history_industry"][1]]
    vocab = extractor.vocabs["extra_industry"]
    expected = list(dict.fromkeys(vocab.index(jobs.loc[j, "Industry"].lower()) for j in recent))
    assert industries[industries != PAD].tolist()[: len(expected)] == expected
    tags = encoded.multi[0, columns["history_tags"][1]]
    assert set(tags[tags != PAD].tolist()) <= set(extractor.vocabs["extra_tags"].lookup(["remote", "python",
                                                                                          "onsite"]).tolist())
    pairs = [(p.user, p.job) for p in extra_board.model.history_match.pairs]
    assert ("history_industry", "job_industry") in pairs and ("history_tags", "job_tags") in pairs
    assert "history_industry" not in [p.user for p in extra_board.model.profile_match.pairs]


def test_the_fast_path_stays_exact_and_the_extractor_round_trips(extra_board, tmp_path):
    extractor = extra_board.data.extractor
    ranker = CatalogRanker(extra_board.model, extractor)
    users = extractor.user_side(extractor.user_catalog.take([1, 2, 3]),
                                np.array(extractor.user_ids[1:4], dtype=object))
    assert float((ranker.score_all(users) - ranker.full_scores(users)).abs().max()) < 1e-5
    extractor.save(tmp_path / "extractor")
    loaded = load_extractor(tmp_path / "extractor")
    assert loaded.feature_map == extractor.feature_map and loaded.extra_columns == extra_board.extra
    assert loaded._extra.stats == extractor._extra.stats and np.array_equal(loaded.user_catalog.dense,
                                                                            extractor.user_catalog.dense)
    assert np.array_equal(loaded.job_catalog.cat, extractor.job_catalog.cat)


def test_live_jobs_carry_their_extra_values_into_encoding_and_training_tables(extra_board):
    upsert = [{"job_id": "live-1", "title": "Analyst", "posted_at": 1, "extra": {"industry": "Finance",
                                                                              "tags": ["remote", "onsite"]}},
              {"job_id": "live-2", "posted_at": 1}, {"job_id": " ", "posted_at": 1},  # a blank id: left out
              {"job_id": "live-3", "posted_at": 1, "extra": {"INDUSTRY": "IT"}}]  # keys: case and punctuation aside
    frame = upserted_jobs(upsert).frame
    assert frame["job_id"].tolist() == ["live-1", "live-2", "live-3"]
    assert frame["industry"].tolist() == ["Finance", "", "IT"] and frame["tags"].tolist() == ["remote;onsite", "", ""]
    zero = upserted_jobs([{"job_id": "a", "extra": {"openings": 0}}, {"job_id": "b", "extra": {"openings": None}}])
    assert zero.frame["openings"].tolist() == [0, ""]  # a number's 0 is a value, not a missing one
    extractor = extra_board.data.extractor
    column = field_columns(extractor.feature_map.of_side("job").fields)["job_industry"][1]
    industry = extractor.vocabs["extra_industry"]
    assert extractor.transform_jobs(frame).cat[:, column].tolist() == [industry.index("finance"), PAD,
                                                                       industry.index("it")]
    jobs = pd.read_csv(extra_board.root / "jobs.csv").assign(posted_at=pd.NaT, expires_at=pd.NaT)
    table, counts = jobs_after(jobs, [Delta(1, 1, tuple(upsert))])
    assert counts["added"] == 3 and "" not in table["job_id"].tolist()  # the file's "Industry", not "industry":
    assert table.set_index("job_id").loc[["live-1", "live-3"], "Industry"].tolist() == ["Finance", "IT"]


def test_a_warm_start_keeps_the_published_columns_and_a_model_needs_its_columns(extra_board, tmp_path):
    with pytest.raises(ConfigError, match="warm start: extra_columns .* differ from the published model's"):
        prepare_data(DataConfig(path=str(extra_board.root), extra_columns={"jobs": {"tags": "list"}}),
                     base=extra_board.data.extractor)
    jobs = pd.read_csv(extra_board.root / "jobs.csv").drop(columns=["Industry"])
    write_market(generate_market(users=300, jobs=200, interactions=3000, seed=0), tmp_path)
    users = pd.read_csv(extra_board.root / "users.csv")
    jobs.to_csv(tmp_path / "jobs.csv", index=False)
    users.to_csv(tmp_path / "users.csv", index=False)
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['Industry'\], which the model reads"):
        prepare_data(DataConfig(path=str(tmp_path)), extractor=extra_board.data.extractor)
