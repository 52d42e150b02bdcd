"""JobFeatureExtractor / TableFeatureExtractor: vocabularies, skills, catalogs, example sets, JSON+NPZ artifacts."""
import json

import numpy as np
import pandas as pd
import pytest

from convfm.errors import ArtifactError, ConfigError, DataValidationError
from convfm.features.jobs import UNKNOWN_ROW, JobFeatureExtractor, TableFeatureExtractor, load_extractor
from convfm.features.fields import PAD, UNK

USER_FIELDS = ["user_id", "user_skills", "user_location", "user_experience"]
JOB_FIELDS = ["job_id", "job_skills", "job_location", "company", "job_type", "job_experience", "salary", "text"]


@pytest.fixture
def jobs():
    return pd.DataFrame({
        "job_id": ["j1", "j2", "j3", "j4", "j5"],
        "title": ["Data Scientist", "Backend Engineer", "ML Engineer", "Frontend Developer", "Data Engineer"],
        "description": [
            "Machine learning models in Python and SQL.",
            "Build APIs in Go, run them with Docker.",
            "Deep learning and Machine-Learning research, mostly PYTHON.",
            "React and TypeScript user interfaces with CSS.",
            "Pipelines in SQL and Python, some Docker.",
        ],
        "skills": ["Python; SQL", "go;  Docker ", "", "react;typescript;css", "sql;airflow"],
        "location": ["Berlin", "berlin ", "Paris", "", "Berlin"],
        "company": ["A", "B", "A", "C", "B"],
        "salary_min": [50_000, np.nan, 70_000, 40_000, 60_000],
        "salary_max": [80_000, 90_000, np.nan, 60_000, 85_000],
        "job_type": ["full-time", "full-time", "contract", "full-time", "part-time"],
        "experience_level": ["senior", "mid", "senior", "junior", "mid"],
    })


@pytest.fixture
def users():
    return pd.DataFrame({
        "user_id": ["u1", "u2", "u3"],
        "skills": ["python;machine learning", "React", "go;rust"],
        "location": ["Berlin", "Paris", "Rome"],
        "experience_level": ["senior", "", "mid"],
    })


@pytest.fixture
def interactions():
    return pd.DataFrame({
        "user_id": ["u1", "u2", "u3", "u1", "u9", "u2"],
        "job_id": ["j1", "j4", "j2", "j3", "j5", "j1"],
        "label": [1, 1, 0, 1, 0, 0],
    })


@pytest.fixture
def fitted(jobs, interactions, users):
    return JobFeatureExtractor(history_length=0, text_dim=3).fit(jobs, interactions, users)


def names(extractor):
    return [f.name for f in extractor.feature_map.fields]


def job_skills(extractor, table):
    """Skill values of each row of a job-side table (padding dropped)."""
    column = [f.name for f in extractor.feature_map.of_kind("multi", "job")].index("job_skills")
    vocab = extractor.vocabs["skill"]
    return [[vocab.values[i - 2] if i > UNK else i for i in row if i != PAD] for row in table.multi[:, column]]


def cat_column(extractor, table, name, side):
    fields = [f.name for f in extractor.feature_map.of_kind("categorical", side)]
    return table.cat[:, fields.index(name)]


def assert_tables_equal(a, b):
    assert np.array_equal(a.cat, b.cat) and np.array_equal(a.multi, b.multi)
    assert a.dense.dtype == b.dense.dtype == np.float32 and np.array_equal(a.dense, b.dense)


def test_seed_readme_feature_extraction_example(jobs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs_df, new_jobs_df = jobs.iloc[:4], jobs.iloc[3:]
    interactions_df = pd.DataFrame({"user_id": [1, 2, 1], "job_id": ["j1", "j2", "j3"],
                                    "event": ["apply", "view", "save"]})
    extractor = JobFeatureExtractor(history_length=0, max_skills=50)
    extractor.fit(jobs_df, interactions_df)
    job_features = extractor.transform_jobs(new_jobs_df)
    interaction_features = extractor.transform_interactions(interactions_df.iloc[:2])
    extractor.save("artifacts/feature_extractor.pkl")
    assert len(job_features) == 2 and len(interaction_features) == 2
    assert cat_column(extractor, job_features, "job_id", "job").tolist() == [UNK, UNK]  # j4, j5: no example
    assert not (tmp_path / "artifacts" / "feature_extractor.pkl").exists()
    assert_tables_equal(JobFeatureExtractor.load("artifacts/feature_extractor.pkl").transform_jobs(new_jobs_df),
                        job_features)


# ------------------------------------------------------------------------------------------ vocabularies
def test_vocabularies_reserve_padding_and_unknown_and_clean_values(fitted):
    skill, location = fitted.vocabs["skill"], fitted.vocabs["location"]
    assert skill.values[:4] == ["python", "sql", "go", "docker"]  # jobs first, lower-cased, stripped
    assert skill.index("") == PAD and skill.index("cobol") == UNK and skill.index("python") == 2
    assert location.values == ["berlin", "paris", "rome"]  # "Berlin" and "berlin " are one value
    assert fitted.vocabs["user"].values == ["u1", "u2", "u3", "u9"]


def test_min_freq_drops_rare_values_but_never_ids(jobs, interactions, users):
    extractor = JobFeatureExtractor(history_length=0, min_freq=2, text_dim=0).fit(jobs, interactions, users)
    assert extractor.vocabs["location"].values == ["berlin", "paris"]
    assert extractor.vocabs["job"].values == ["j1", "j2", "j3", "j4", "j5"]


def test_ids_without_a_training_example_read_the_unknown_row(jobs, users):
    interactions = pd.DataFrame({"user_id": ["u2", "u7"], "job_id": ["j3", "j1"], "label": [1, 0]})
    extractor = JobFeatureExtractor(history_length=0, text_dim=0).fit(jobs, interactions, users)
    assert extractor.vocabs["user"].values == ["u2", "u7"] and extractor.vocabs["job"].values == ["j1", "j3"]
    table = extractor.transform_jobs(jobs)
    assert cat_column(extractor, table, "job_id", "job").tolist() == [2, UNK, 3, UNK, UNK]
    users_table = extractor.transform_users(users)
    assert cat_column(extractor, users_table, "user_id", "user").tolist() == [UNK, 2, UNK]
    # without interactions to judge by, every catalog id is kept
    assert JobFeatureExtractor(history_length=0, text_dim=0).fit(jobs).vocabs["job"].values == list(jobs["job_id"])


def test_unknown_ids_skills_and_locations_map_to_unknown(fitted):
    new = pd.DataFrame({"job_id": ["j99", None], "skills": ["COBOL;python", None],
                        "location": ["Mars", np.nan], "company": ["Z", "A"]})
    table = fitted.transform_jobs(new)
    assert cat_column(fitted, table, "job_id", "job").tolist() == [UNK, UNK]
    assert cat_column(fitted, table, "job_location", "job").tolist() == [UNK, PAD]
    assert cat_column(fitted, table, "company", "job").tolist() == [UNK, 2]
    assert job_skills(fitted, table) == [["python", UNK], []]  # known first, unknown after
    salary = table.dense[:, :3]
    assert salary.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]  # missing columns: mean + flag


# ------------------------------------------------------------------------------------------------ skills
def test_skills_found_in_title_and_description(fitted, jobs):
    skills = job_skills(fitted, fitted.transform_jobs(jobs))
    assert skills[0] == ["python", "sql", "machine learning"]  # column first, then text
    assert skills[2] == ["machine learning", "python"]  # empty column, all from text (hyphen, case)
    assert "docker" in skills[4] and "airflow" in skills[4]


def test_skill_matching_is_whole_word_and_can_be_disabled(jobs, interactions):
    frame = jobs.assign(description=["gopher pythonic", "", "", "", ""], title="", skills="")
    frame.loc[1, "skills"] = "go;python"
    extractor = JobFeatureExtractor(history_length=0, text_dim=0).fit(frame, interactions)
    assert job_skills(extractor, extractor.transform_jobs(frame))[0] == []
    off = JobFeatureExtractor(history_length=0, text_dim=0, skills_from_text=False).fit(jobs, interactions)
    assert job_skills(off, off.transform_jobs(jobs))[2] == []


def test_max_skills_caps_lists_keeping_column_skills_first(jobs, interactions):
    frame = jobs.assign(skills=["a;b;c;d;e"] + list(jobs["skills"][1:]))
    extractor = JobFeatureExtractor(history_length=0, max_skills=3, text_dim=0).fit(frame, interactions)
    table = extractor.transform_jobs(frame)
    assert table.multi.shape == (5, 1, 3)
    assert job_skills(extractor, table)[0] == ["a", "b", "c"]


def test_user_and_job_skills_share_one_vocabulary(fitted, jobs, users):
    fields = {f.name: f for f in fitted.feature_map.fields}
    assert fields["user_skills"].vocab == fields["job_skills"].vocab == "skill"
    assert fields["user_skills"].size == fields["job_skills"].size == len(fitted.vocabs["skill"])
    user_python = fitted.transform_users(users).multi[0, 0, 0]
    assert user_python == fitted.transform_jobs(jobs).multi[0, 0, 0] == fitted.vocabs["skill"].index("python")


# ---------------------------------------------------------------------------------------- feature map
def test_feature_map_orders_user_fields_then_job_fields(fitted):
    assert names(fitted) == USER_FIELDS + JOB_FIELDS
    assert [f.side for f in fitted.feature_map.fields] == ["user"] * 4 + ["job"] * 8
    widths = {f.name: f.width for f in fitted.feature_map.of_kind("dense")}
    assert widths == {"salary": 3, "text": 3}


def test_small_corpus_gets_fewer_text_components(jobs, interactions):
    extractor = JobFeatureExtractor(history_length=0, text_dim=16).fit(jobs, interactions)
    assert extractor.feature_map.of_kind("dense")[1].width == 5  # 5 documents
    assert extractor.transform_jobs(jobs).dense.shape == (5, 3 + 5)


def test_jobs_file_with_only_job_id(interactions):
    jobs = pd.DataFrame({"job_id": [1, 2, 3, 4, 5]})  # int ids read as the strings "1".."5"
    extractor = JobFeatureExtractor(history_length=0).fit(jobs, interactions.assign(job_id=["1", "4", "2", "3", "5", "1"]))
    assert names(extractor) == ["user_id", "job_id"]
    table = extractor.transform_interactions(pd.DataFrame({"user_id": ["u1", "zz"], "job_id": [2, "7"]}))
    assert table.cat.tolist() == [[2, 3], [UNK, UNK]]
    assert table.multi.shape == (2, 0, 0) and table.dense.shape == (2, 0)


def test_no_users_file_gives_only_user_id_on_the_user_side(jobs, interactions):
    extractor = JobFeatureExtractor(history_length=0, text_dim=2).fit(jobs, interactions)
    assert names(extractor) == ["user_id"] + JOB_FIELDS
    assert extractor.user_ids == ["", "u1", "u2", "u3", "u9"]


# ------------------------------------------------------------------------------------------- catalogs
def test_catalogs_have_an_unknown_row_zero(fitted, jobs):
    assert fitted.job_ids == [""] + list(jobs["job_id"]) and fitted.job_rows["j1"] == 1
    assert fitted.user_ids == ["", "u1", "u2", "u3", "u9"]  # profiles, then ids only seen in interactions
    assert fitted.user_catalog.cat[UNKNOWN_ROW].tolist() == [UNK, PAD, PAD]
    assert fitted.job_catalog.cat[UNKNOWN_ROW].tolist() == [UNK, PAD, PAD, PAD, PAD]
    assert not fitted.job_catalog.multi[UNKNOWN_ROW].any()
    assert fitted.job_catalog.dense[UNKNOWN_ROW, :3].tolist() == [0.0, 0.0, 1.0]
    assert fitted.user_catalog.cat[4].tolist() == [5, PAD, PAD]  # u9: known id, no profile
    assert_tables_equal(fitted.job_catalog.take(np.arange(1, 6)), fitted.transform_jobs(jobs))


def test_cold_start_profile_encodes_without_an_id(fitted):
    profile = pd.DataFrame({"user_id": ["new-user"], "skills": ["Python; Rust; Haskell"], "location": ["Paris"]})
    table = fitted.transform_users(profile)
    skill = fitted.vocabs["skill"]
    assert table.cat.tolist() == [[UNK, fitted.vocabs["location"].index("paris"), PAD]]
    assert table.multi[0, 0, :3].tolist() == [skill.index("python"), skill.index("rust"), UNK]


def test_salary_is_standardised_log_with_missing_flag(fitted, jobs):
    salary = fitted.transform_jobs(jobs).dense[:, :3]
    logs = np.log1p(jobs["salary_min"].dropna().to_numpy())
    expected = (np.log1p(50_000) - logs.mean()) / logs.std()
    assert salary[0, 0] == pytest.approx(expected, rel=1e-6)
    assert salary[:, 2].tolist() == [0, 1, 1, 0, 0] and salary[1, 0] == 0 and salary[2, 1] == 0


# ------------------------------------------------------------------------------------- example sets
def test_example_set_gathers_the_transform_interactions_rows(fitted, interactions):
    examples = fitted.example_set(interactions)
    assert examples.rows.tolist() == [[1, 1], [2, 4], [3, 2], [1, 3], [4, 5], [2, 1]]
    assert examples.labels.tolist() == [1, 1, 0, 1, 0, 0]
    batch, labels = examples.gather(np.arange(len(examples)))
    table = fitted.transform_interactions(interactions)
    # lists come padded to the longest list in the catalogs, not to max_skills (50): only padding is cut
    length = max(int(np.flatnonzero(side.multi.any(axis=(0, 1)))[-1]) + 1 for side in examples.tables)
    assert batch.cat.shape == (6, 8) and batch.multi.shape == (6, 2, length) and batch.dense.shape == (6, 6)
    assert 0 < length < 50 and not table.multi[:, :, length:].any()
    assert np.array_equal(batch.cat.numpy(), table.cat)
    assert np.array_equal(batch.multi.numpy(), table.multi[:, :, :length])
    assert np.array_equal(batch.dense.numpy(), table.dense)


def test_unknown_ids_in_examples_use_the_unknown_rows(fitted):
    examples = fitted.example_set(pd.DataFrame({"user_id": ["u1", "nobody"], "job_id": ["j404", "j2"],
                                                "label": [0, 1]}))
    assert examples.rows.tolist() == [[1, UNKNOWN_ROW], [UNKNOWN_ROW, 2]]


def test_example_set_refuses_missing_columns_and_bad_labels(fitted):
    with pytest.raises(DataValidationError, match=r"missing required column\(s\) \['job_id'\]"):
        fitted.example_set(pd.DataFrame({"user_id": ["u1"], "label": [1]}))
    with pytest.raises(DataValidationError, match="examples: column 'label', row 2: label 'x' is not binary"):
        fitted.example_set(pd.DataFrame({"user_id": ["u1", "u2"], "job_id": ["j1", "j2"], "label": [1, "x"]}))
    with pytest.raises(DataValidationError, match="column 'label', row 1: label '0.5' is not binary"):
        fitted.example_set(pd.DataFrame({"user_id": ["u1"], "job_id": ["j1"], "label": [0.5]}))
    labels = fitted.example_set(pd.DataFrame({"user_id": ["u1"] * 3, "job_id": ["j1"] * 3,
                                              "label": [-1, 1, 0]})).labels
    assert labels.tolist() == [0.0, 1.0, 0.0]  # -1/1 as the loaders read it, not a target of -1


def test_transform_is_deterministic(jobs, interactions, users):
    first = JobFeatureExtractor(history_length=0, text_dim=3).fit(jobs, interactions, users)
    second = JobFeatureExtractor(history_length=0, text_dim=3).fit(jobs, interactions, users)
    assert first.feature_map == second.feature_map
    assert_tables_equal(first.transform_interactions(interactions), second.transform_interactions(interactions))
    assert_tables_equal(first.transform_jobs(jobs), first.transform_jobs(jobs))


def test_invalid_options_and_unfitted_use_are_refused(jobs):
    with pytest.raises(ConfigError, match="max_skills: must be an integer >= 1"):
        JobFeatureExtractor(history_length=0, max_skills=0)
    with pytest.raises(DataValidationError, match="jobs: missing required column"):
        JobFeatureExtractor(history_length=0).fit(jobs.drop(columns="job_id"))
    with pytest.raises(Exception, match="not fitted"):
        JobFeatureExtractor().transform_jobs(jobs)


# ------------------------------------------------------------------------------------------ artifacts
def assert_no_pickle(directory):
    for path in directory.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), path


@pytest.mark.parametrize("target", ["model_dir", "artifacts/feature_extractor.pkl"])
def test_job_extractor_round_trip_is_exact(fitted, jobs, users, interactions, tmp_path, target):
    fitted.save(tmp_path / target)
    if target.endswith(".pkl"):
        assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == [
            "feature_extractor.json", "feature_extractor.npz"]
        sources = [tmp_path / target, tmp_path / "artifacts"]
    else:
        sources = [tmp_path / target]
    assert_no_pickle(tmp_path)
    new_jobs = jobs.assign(job_id=["j1", "x", "j3", "y", "j5"], description=jobs["description"] + " kubernetes")
    for source in sources:
        loaded = JobFeatureExtractor.load(source)
        assert isinstance(load_extractor(source), JobFeatureExtractor)
        assert loaded.feature_map == fitted.feature_map and loaded.get_config() == fitted.get_config()
        assert loaded.job_rows == fitted.job_rows and loaded.user_ids == fitted.user_ids
        assert_tables_equal(loaded.transform_jobs(new_jobs), fitted.transform_jobs(new_jobs))
        assert_tables_equal(loaded.transform_users(users), fitted.transform_users(users))
        assert_tables_equal(loaded.transform_interactions(interactions), fitted.transform_interactions(interactions))
        assert np.array_equal(loaded.example_set(interactions).rows, fitted.example_set(interactions).rows)


def test_format_version_mismatch_is_refused(fitted, tmp_path):
    fitted.save(tmp_path)
    document = json.loads((tmp_path / "extractor.json").read_text())
    document["format_version"] = 99
    (tmp_path / "extractor.json").write_text(json.dumps(document))
    with pytest.raises(ArtifactError, match=r"extractor\.json: extractor format_version 99"):
        JobFeatureExtractor.load(tmp_path)


def test_truncated_or_missing_files_are_refused(fitted, tmp_path):
    fitted.save(tmp_path / "fx.pkl")
    npz = tmp_path / "fx.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"fx\.npz: checksum differs"):
        load_extractor(tmp_path / "fx.pkl")
    document = json.loads((tmp_path / "fx.json").read_text())
    document["npz_sha256"] = __import__("hashlib").sha256(npz.read_bytes()).hexdigest()
    (tmp_path / "fx.json").write_text(json.dumps(document))  # even with a matching checksum
    with pytest.raises(ArtifactError, match=r"fx\.npz: unreadable extractor arrays"):
        load_extractor(tmp_path / "fx.pkl")
    npz.unlink()
    with pytest.raises(ArtifactError, match=r"fx\.npz: extractor arrays not found"):
        load_extractor(tmp_path / "fx.pkl")
    (tmp_path / "fx.json").write_text('{"format_version": 1, "kind"')
    with pytest.raises(ArtifactError, match=r"fx\.json: extractor file is not valid JSON"):
        load_extractor(tmp_path / "fx.pkl")
    with pytest.raises(ArtifactError, match=r"nothing[/\\]extractor\.json: extractor file not found"):
        load_extractor(tmp_path / "nothing")


def test_tampered_vocabulary_is_refused(fitted, tmp_path):
    fitted.save(tmp_path)
    document = json.loads((tmp_path / "extractor.json").read_text())
    document["vocabularies"]["skill"].append("extra")
    (tmp_path / "extractor.json").write_text(json.dumps(document))
    with pytest.raises(ArtifactError, match="feature map disagrees"):
        load_extractor(tmp_path)


# -------------------------------------------------------------------------------------- generic tables
@pytest.fixture
def table():
    return pd.DataFrame({
        "color": ["red", "blue", "red", "green"],
        "tags": ["a;b", "b", "", "c;a;d"],
        "price": [1.0, 2.0, 3.0, 6.0],
        "label": [1, 0, 1, 0],
    })


def test_table_extractor_encodes_each_column_with_its_own_vocabulary(table):
    extractor = TableFeatureExtractor(["color"], ["tags"], ["price"], max_len=3).fit(table)
    assert [(f.name, f.kind, f.side, f.vocab) for f in extractor.feature_map.fields] == [
        ("color", "categorical", "row", "color"), ("tags", "multi", "row", "tags"), ("price", "dense", "row", "")]
    encoded = extractor.transform(pd.DataFrame({"color": ["blue", "pink"], "tags": ["d;zz;a;b", None],
                                                "price": [3.0, np.nan]}))
    assert encoded.cat.tolist() == [[3], [UNK]]
    assert encoded.multi.tolist() == [[[5, 2, 3]], [[0, 0, 0]]]
    assert encoded.dense[:, 0].tolist() == [0.0, 0.0]  # 3.0 is the mean; NaN -> the mean
    examples = extractor.example_set(table)
    assert examples.rows[:, 0].tolist() == [0, 1, 2, 3] and examples.labels.tolist() == [1, 0, 1, 0]
    batch, _ = examples.gather(np.arange(4))
    assert batch.cat.shape == (4, 1) and batch.multi.shape == (4, 1, 3) and batch.dense.shape == (4, 1)


def test_table_extractor_round_trip_and_kind(table, tmp_path):
    extractor = TableFeatureExtractor(["color"], ["tags"], ["price"]).fit(table)
    extractor.save(tmp_path / "artifacts" / "table.pkl")
    assert_no_pickle(tmp_path)
    loaded = load_extractor(tmp_path / "artifacts")
    assert isinstance(loaded, TableFeatureExtractor) and loaded.feature_map == extractor.feature_map
    assert_tables_equal(loaded.transform(table), extractor.transform(table))
    with pytest.raises(ArtifactError, match="kind 'table', expected 'jobs'"):
        JobFeatureExtractor.load(tmp_path / "artifacts" / "table.pkl")


def test_table_extractor_refuses_bad_options_and_missing_columns(table):
    with pytest.raises(ConfigError, match=r"\['color'\] listed more than once"):
        TableFeatureExtractor(["color"], ["color"])
    with pytest.raises(DataValidationError, match=r"missing required column\(s\) \['size'\]"):
        TableFeatureExtractor(["size"]).fit(table)


def test_html_job_text_is_read_as_plain_text():
    from convfm.features.text import plain_text

    assert plain_text("<p>SQL&nbsp;&amp; <b>Python</b></p><li>R&amp;D</li>").split() == ["SQL", "&", "Python", "R&D"]
    assert plain_text("AT&T, x < y") == "AT&T, x < y"  # no tag, no entity: as written
    assert plain_text("<3 years of python, teams of >10; &notice") == "<3 years of python, teams of >10; &notice"
    jobs = pd.DataFrame({"job_id": ["a", "b", "c"], "description": ["<ul><li>python</li></ul>&nbsp;",
                                                                    "<p>sql and python</p>", "&lt;b&gt;cooking"]})
    extractor = JobFeatureExtractor(history_length=0, text_dim=2).fit(jobs)
    assert {"python", "sql", "cooking"} <= set(extractor._text.terms.tolist())
    assert not {"nbsp", "li", "ul", "lt", "gt"} & set(extractor._text.terms.tolist())
