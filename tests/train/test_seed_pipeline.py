"""The seed document's ml_models examples run as written (tiny data, 2 epochs) on the Ray Train path."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from convfm.store.artifacts import load_model_dir
from convfm.errors import ConfigError
from convfm.data.synth import generate_market

BASIC_TRAINING = """
from ml_models.training_pipeline import ConvFMTrainingPipeline, create_training_config
import pandas as pd

# Load your data
jobs_df = pd.read_csv('data/collected_jobs.csv')
interactions_df = pd.read_csv('data/user_interactions.csv')

# Create training configuration
config = create_training_config(
    embedding_dim=64,
    batch_size=32,
    num_epochs=2,  # the seed says 50; two keep the test short
    learning_rate=0.001
)

# Initialize pipeline
pipeline = ConvFMTrainingPipeline(config)

# Run training
results = pipeline.run_full_pipeline(jobs_df, interactions_df)

print(f"Model saved to: {results['model_path']}")
print(f"Validation accuracy: {results['validation_metrics']['accuracy']:.4f}")
"""

MAKING_RECOMMENDATIONS = """
from ml_models.convfm_model import ConvFMJobRecommender
import torch

# Load trained model
model = ConvFMJobRecommender(num_users=200, num_jobs=10, num_skills=40, num_locations=5, num_companies=8)
model.load_state_dict(torch.load('models/best_convfm_model.pt'))

# Generate recommendations
user_id = 123
job_ids = [1, 2, 3, 4, 5]
user_skills = [10, 20, 30]  # Skill IDs
location_id = 1
company_id = 5

scores = model.predict_job_scores(
    user_id=user_id,
    job_ids=job_ids,
    skill_ids=user_skills,
    location_id=location_id,
    company_id=company_id
)

# Get top recommendations
top_jobs = sorted(scores.items(), key=lambda x: x[1], reverse=True)[:5]
print(f"Top recommendations: {top_jobs}")
"""

FEATURE_EXTRACTION = """
from ml_models.feature_extractor import JobFeatureExtractor

# Initialize extractor
extractor = JobFeatureExtractor(max_skills=50)

# Fit on training data
extractor.fit(jobs_df, interactions_df)

# Transform new data
job_features = extractor.transform_jobs(new_jobs_df)
interaction_features = extractor.transform_interactions(new_interactions_df)

# Save for later use
extractor.save('artifacts/feature_extractor.pkl')
"""


@pytest.fixture
def seed_data(tmp_path, monkeypatch):
    market = generate_market(users=300, jobs=150, interactions=6000, seed=1)
    (tmp_path / "data").mkdir()
    market.jobs.to_csv(tmp_path / "data" / "collected_jobs.csv", index=False)
    market.interactions.to_csv(tmp_path / "data" / "user_interactions.csv", index=False)
    monkeypatch.chdir(tmp_path)
    return market


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_basic_training_runs_the_ray_train_pipeline(ray_local, seed_data, tmp_path, capsys):
    scope: dict = {}
    exec(textwrap.dedent(BASIC_TRAINING), scope)
    results = scope["results"]
    out = capsys.readouterr().out
    assert f"Model saved to: {results['model_path']}" in out and "Validation accuracy: 0." in out
    metrics = results["validation_metrics"]
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ndcg@10"} <= set(metrics)
    assert metrics["roc_auc"] > 0.55  # two epochs at lr 1e-3 on 300 users: above chance, short of converged
    loaded = load_model_dir(results["model_path"])
    assert loaded.model.config.embedding_dim == 64
    run = json.loads((Path(results["run_dir"]) / "run.json").read_text())
    assert run["train"]["batch_size"] == 32 and run["epochs_trained"] == 2
    # the default single worker: this is the suite's 1-worker Ray Train run that completes
    assert pd.read_csv(Path(results["run_dir"]) / "metrics.csv")["world_size"].tolist() == [1, 1]
    assert Path(results["model_path"]).resolve().is_relative_to((tmp_path / "runs").resolve())


def test_making_recommendations(seed_data, tmp_path, capsys):
    from convfm.model.recommender import ConvFMJobRecommender

    (tmp_path / "models").mkdir()
    trained = ConvFMJobRecommender(num_users=200, num_jobs=10, num_skills=40, num_locations=5, num_companies=8)
    torch.save(trained.state_dict(), tmp_path / "models" / "best_convfm_model.pt")
    scope: dict = {}
    exec(textwrap.dedent(MAKING_RECOMMENDATIONS), scope)
    assert len(scope["top_jobs"]) == 5 and set(scope["scores"]) == {1, 2, 3, 4, 5}
    assert all(0.0 < score < 1.0 for score in scope["scores"].values())
    assert "Top recommendations: [(" in capsys.readouterr().out


def test_feature_extraction_saves_no_pickle(seed_data, tmp_path):
    from ml_models.feature_extractor import JobFeatureExtractor

    scope = {"jobs_df": seed_data.jobs, "interactions_df": seed_data.interactions,
             "new_jobs_df": seed_data.jobs.head(5), "new_interactions_df": seed_data.interactions.head(5)}
    exec(textwrap.dedent(FEATURE_EXTRACTION), scope)
    assert not (tmp_path / "artifacts" / "feature_extractor.pkl").exists()
    assert {p.name for p in (tmp_path / "artifacts").iterdir()} == {"feature_extractor.json", "feature_extractor.npz"}
    reloaded = JobFeatureExtractor.load("artifacts/feature_extractor.pkl")
    assert reloaded.feature_map == scope["extractor"].feature_map
    assert scope["job_features"].cat.shape[0] == 5 and scope["interaction_features"].cat.shape[0] == 5


def test_training_config_refuses_unknown_options():
    from ml_models.training_pipeline import create_training_config

    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['embeding_dim'\]"):
        create_training_config(embeding_dim=32)
    with pytest.raises(ConfigError, match=r"learning_rate: must be a number in \(0, 1\]"):
        create_training_config(learning_rate=-1.0)
    config = create_training_config(num_workers=2, seed=3, max_skills=20)
    assert config.train.num_workers == 2 and config.train.seed == 3 and config.data["seed"] == 3
    assert config.extractor == {"max_skills": 20}
