"""deploy/ (KubeRay): manifests parse, carry the fields KubeRay needs, agree with each other, the CLI and Serve.

No Kubernetes here: field names are checked against the KubeRay v1 API (ray-operator/apis/ray/v1/*_types.go),
entrypoints against ``convfm.cli.main`` (and the configs they name are validated as the CLI would, before Ray),
serveConfigV2 against Ray Serve's own schema, serve/config.yaml and ``ServeConfig``.
"""
from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = {"rayjob-train.yaml": "RayJob", "rayjob-tune.yaml": "RayJob", "rayservice.yaml": "RayService"}
IMAGE_SOURCE = "/home/ray/convfm"  # where deploy/Dockerfile puts the repository
SHARED = "/mnt/shared"
# KubeRay v1 API fields (json tags) that these manifests may use.
RAYJOB_SPEC = {"entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
               "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "schedule"}
RAYSERVICE_SPEC = {"serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy",
                   "excludeHeadPodFromServeSvc"}
CLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
                "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions", "managedBy", "authOptions"}
AUTOSCALER = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
              "idleTimeoutSeconds", "upscalingMode", "version"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
                "scaleStrategy", "suspend", "idleTimeoutSeconds"}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


def load_all(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DEPLOY / name).read_text()))


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return {name: load(name) for name in MANIFESTS}


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec" if manifest["kind"] == "RayJob" else "rayClusterConfig"]


def pod_templates(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    if manifest["kind"] == "Pod":
        yield "pod", manifest["spec"]
        return
    spec = cluster_spec(manifest)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_has_the_fields_kuberay_needs(manifests, name):
    manifest = manifests[name]
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == MANIFESTS[name]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    spec = manifest["spec"]
    allowed = RAYJOB_SPEC if manifest["kind"] == "RayJob" else RAYSERVICE_SPEC
    assert set(spec) <= allowed, f"unknown spec fields {set(spec) - allowed}"
    if manifest["kind"] == "RayJob":
        assert spec["entrypoint"].strip() and spec["shutdownAfterJobFinishes"] is True
    else:
        assert spec["serveConfigV2"].strip()
    cluster = cluster_spec(manifest)
    assert set(cluster) <= CLUSTER_SPEC, f"unknown cluster fields {set(cluster) - CLUSTER_SPEC}"
    assert cluster["rayVersion"] == ray.__version__
    assert set(cluster.get("autoscalerOptions", {})) <= AUTOSCALER
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP and {"rayStartParams", "template"} <= set(head)
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, f"unknown worker group fields {set(group) - WORKER_GROUP}"
        assert {"groupName", "rayStartParams", "template"} <= set(group)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    for role, pod in pod_templates(manifest):
        for container in pod["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and resources["limits"], (name, role)
            gpus = resources["requests"].get("nvidia.com/gpu")
            assert gpus == resources["limits"].get("nvidia.com/gpu"), (name, role)  # Kubernetes requires it


def test_one_image_everywhere_tagged_with_the_project_version(manifests):
    pods = {**manifests, "storage.yaml": load_all("storage.yaml")[1]}
    images = {(name, role, c["image"]) for name, m in pods.items() for role, pod in pod_templates(m)
              for c in pod["containers"]}
    assert len({image for _, _, image in images}) == 1, sorted(images)
    image = images.pop()[2]
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert image.rsplit(":", 1)[1] == version, f"{image}: tag it with the project version {version}"
    python = "py{}{}".format(*sys.version_info[:2])
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-{python}-gpu$", dockerfile, flags=re.M)
    assert f"-t {image} " in dockerfile  # the build command in its header makes this image


def test_every_pod_mounts_the_shared_volume(manifests):
    claim, toolbox = load_all("storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    for name, manifest in {**manifests, "storage.yaml": toolbox}.items():
        for role, pod in pod_templates(manifest):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert SHARED in mounts, (name, role)
                claim_name = volumes[mounts[SHARED]]["persistentVolumeClaim"]["claimName"]
                assert claim_name == claim["metadata"]["name"], (name, role)


def test_nothing_is_exposed_outside_the_cluster(manifests):
    for name, manifest in manifests.items():
        head = cluster_spec(manifest)["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
        assert not head.get("enableIngress"), name
        assert manifest["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


@pytest.mark.parametrize("name, command", [("rayjob-train.yaml", "train"), ("rayjob-tune.yaml", "tune")])
def test_entrypoint_is_a_valid_convfm_command_with_artifacts_on_shared_storage(manifests, parse_convfm, name,
                                                                                 command):
    args = parse_convfm(manifests[name]["spec"]["entrypoint"])
    assert args.command == command
    assert args.address == "auto"  # join the job's cluster (and ship convfm/train to its workers)
    for flag in ("data", "out", "registry", "storage"):
        value = getattr(args, flag, None)
        assert value is None or value.startswith(SHARED + "/"), f"--{flag} {value}: not on the shared volume"
    assert args.out and args.data
    assert args.config.startswith(IMAGE_SOURCE + "/")
    assert (ROOT / args.config[len(IMAGE_SOURCE) + 1:]).is_file(), args.config


def _configs_as_the_cli_resolves_them(parse_convfm, manifest: dict[str, Any], module: str) -> tuple:
    """The command's resolve_configs (Ray-free validation), with the image's paths mapped into this repo."""
    args = parse_convfm(manifest["spec"]["entrypoint"])
    args.config = str(ROOT / args.config[len(IMAGE_SOURCE) + 1:])
    return importlib.import_module(module).resolve_configs(args)


def test_train_job_configs_validate_and_the_gpu_group_fits_the_workers(manifests, parse_convfm):
    manifest = manifests["rayjob-train.yaml"]
    data, model, train, out_dir = _configs_as_the_cli_resolves_them(parse_convfm, manifest, "convfm.cli.train")
    assert train.use_gpu and data.path.startswith(SHARED) and str(out_dir).startswith(SHARED)
    gpu_groups = [g for g in cluster_spec(manifest)["workerGroupSpecs"] if _gpus(g)]
    assert sum(g["replicas"] for g in gpu_groups) >= train.num_workers  # the run starts without waiting
    assert sum(g["maxReplicas"] for g in gpu_groups) >= train.num_workers


def test_tune_job_configs_validate_and_the_gpus_are_there_when_it_starts(manifests, parse_convfm):
    manifest = manifests["rayjob-tune.yaml"]
    data, model, train, tune, out_dir = _configs_as_the_cli_resolves_them(parse_convfm, manifest,
                                                                          "convfm.cli.tune")
    assert tune.use_gpu and tune.registry.startswith(SHARED) and str(out_dir).startswith(SHARED)
    # `convfm tune` sizes concurrency from the GPUs present at start: the initial replicas must hold them
    gpus = sum(g["replicas"] * _gpus(g) for g in cluster_spec(manifest)["workerGroupSpecs"])
    assert gpus >= tune.max_concurrent * tune.workers_per_trial


def _gpus(group: dict[str, Any]) -> int:
    containers = group["template"]["spec"]["containers"]
    return sum(int(c["resources"]["requests"].get("nvidia.com/gpu", 0)) for c in containers)


def test_serve_config_is_serve_config_yaml_on_the_shared_registry(manifests):
    from ray.serve.schema import ServeDeploySchema

    deployed = yaml.safe_load(manifests["rayservice.yaml"]["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(deployed)  # what the Serve controller accepts
    local = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert deployed["proxy_location"] == local["proxy_location"]
    assert deployed["http_options"] == {**local["http_options"], "host": "0.0.0.0"}  # behind a ClusterIP Service
    assert len(deployed["applications"]) == len(local["applications"]) == 1
    app, reference = deployed["applications"][0], local["applications"][0]
    assert {k: v for k, v in app.items() if k != "args"} == {k: v for k, v in reference.items() if k != "args"}
    deliberate = {"model", "api_key_env", "auth_all_endpoints", "allowed_hosts"}  # test_kuberay_security.py
    assert {k: v for k, v in app["args"].items() if k not in deliberate} == \
           {k: v for k, v in reference["args"].items() if k not in deliberate}
    assert app["args"]["model"] == f"{SHARED}/models/convfm"  # where rayjob-tune.yaml publishes
    tune_args = shlex.split(manifests["rayjob-tune.yaml"]["spec"]["entrypoint"])
    assert f"{tune_args[tune_args.index('--registry') + 1]}/{tune_args[tune_args.index('--name') + 1]}" \
        == app["args"]["model"]


def test_serve_import_path_and_args_match_the_code(manifests):
    app = yaml.safe_load(manifests["rayservice.yaml"]["spec"]["serveConfigV2"])["applications"][0]
    module, attribute = app["import_path"].split(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    assert callable(getattr(importlib.import_module(module), attribute))
    from serve.config import ServeConfig

    config = ServeConfig.from_args(app["args"])  # unknown keys or bad values raise ConfigError
    assert config.model == app["args"]["model"] and config.num_gpus == 0
    deployments = {d["name"] for d in app.get("deployments", [])}
    assert deployments <= {"Api", "Ranker"}
    # replicas fit the worker group: every Ranker replica needs replica_cpus of a pod
    group = cluster_spec(manifests["rayservice.yaml"])["workerGroupSpecs"][0]
    cpus = int(group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])
    assert group["maxReplicas"] * cpus >= config.max_replicas * config.replica_cpus(cpus) + config.ingress_num_cpus
