"""Everything in cluster/ without Docker or Kubernetes: every YAML parses and validates against schemas
built offline (KubeRay v1.2.0's RayJob/RayCluster fields, the core kinds' required fields, Ray's own
`ray up` schema), one image name and one Ray version everywhere, the Dockerfile's pins, the kustomization."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = json.loads((Path(__file__).parent / "schemas" / "kuberay-v1.2.0.json").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RAY_PIN = re.search(r"ray\[[^\]]*\]==([0-9.]+)", " ".join(PYPROJECT["project"]["optional-dependencies"]["ray"])).group(1)
VERSION = PYPROJECT["project"]["version"]
K8S_FILES = ("rayjob.yaml", "raycluster.yaml", "nightly.yaml", "secret-example.yaml")

CONTAINER = {"type": "object", "required": ["name", "image"],
             "properties": {"name": {"type": "string"}, "image": {"type": "string", "minLength": 3},
                            "envFrom": {"type": "array", "items": {"type": "object"}},
                            "resources": {"type": "object", "properties": {"requests": {"type": "object"},
                                                                          "limits": {"type": "object"}}}}}
POD_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {"spec": {
    "type": "object", "required": ["containers"],
    "properties": {"containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                   "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
                   "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}}}}}}
META = {"type": "object", "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                         "generateName": {"type": "string", "pattern": r"^[a-z0-9][-a-z0-9]*-$"}},
        "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}]}


def kind_schema(api_version: str, kind: str, spec: dict | None = None, **extra) -> dict:
    props = {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": META, **extra}
    required = ["apiVersion", "kind", "metadata"]
    if spec is not None:
        props["spec"], required = spec, required + ["spec"]
    return {"type": "object", "required": required, "properties": props}


CRON = r"^(\S+\s+){4}\S+$"
SCHEMAS = {
    "RayJob": kind_schema("ray.io/v1", "RayJob", KUBERAY["RayJob"]),
    "RayCluster": kind_schema("ray.io/v1", "RayCluster", KUBERAY["RayCluster"]),
    "ServiceAccount": kind_schema("v1", "ServiceAccount"),
    "Secret": kind_schema("v1", "Secret", type={"const": "Opaque"},
                          stringData={"type": "object", "additionalProperties": {"type": "string"}}),
    "Role": kind_schema("rbac.authorization.k8s.io/v1", "Role", rules={"type": "array", "items": {
        "type": "object", "required": ["apiGroups", "resources", "verbs"]}}),
    "RoleBinding": kind_schema("rbac.authorization.k8s.io/v1", "RoleBinding",
                               subjects={"type": "array", "minItems": 1},
                               roleRef={"type": "object", "required": ["apiGroup", "kind", "name"]}),
    "CronJob": kind_schema("batch/v1", "CronJob", {
        "type": "object", "required": ["schedule", "jobTemplate"],
        "properties": {"schedule": {"type": "string", "pattern": CRON},
                       "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]},
                       "jobTemplate": {"type": "object", "required": ["spec"], "properties": {"spec": {
                           "type": "object", "required": ["template"], "properties": {"template": POD_TEMPLATE}}}}}}),
}


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d is not None]


def pod_templates(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    cluster = spec.get("rayClusterSpec", spec)
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]


def all_docs() -> list[tuple[str, dict]]:
    return [(name, doc) for name in K8S_FILES for doc in documents(name)]


@pytest.mark.parametrize("name,doc", all_docs(), ids=lambda v: v if isinstance(v, str) else v.get("kind"))
def test_every_kubernetes_document_validates(name, doc):
    assert doc.get("kind") in SCHEMAS, f"{name}: unexpected kind {doc.get('kind')!r}"
    jsonschema.validate(doc, SCHEMAS[doc["kind"]])
    if doc["kind"] in ("RayJob", "RayCluster", "CronJob"):
        for template in pod_templates(doc):
            jsonschema.validate(template, POD_TEMPLATE)


def test_kuberay_schema_catches_a_misspelt_field():
    job = documents("rayjob.yaml")[0]
    job["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        jsonschema.validate(job, SCHEMAS["RayJob"])


def diffseg_images() -> dict[str, str]:
    """file -> every diffseg image it names (k8s containers, the `ray up` docker image, the Makefile)."""
    found = {}
    for name, doc in all_docs():
        if doc["kind"] in ("RayJob", "RayCluster"):
            for template in pod_templates(doc):
                for c in template["spec"]["containers"]:
                    found.setdefault(name, set()).add(c["image"])
    found["ray-up.yaml"] = {yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())["docker"]["image"]}
    return found


def test_one_image_everywhere_tagged_with_the_package_version():
    images = diffseg_images()
    assert set(images) >= {"rayjob.yaml", "raycluster.yaml", "ray-up.yaml"}
    names = set().union(*images.values())
    assert len(names) == 1, f"several images: {images}"
    (image,) = names
    assert image.rsplit(":", 1)[1] == VERSION and image.rsplit(":", 1)[0].endswith("/diffseg")
    makefile = (ROOT / "Makefile").read_text()
    if "image:" in makefile:  # the `make image` target builds the same name by default
        assert f"IMAGE ?= {image.rsplit(':', 1)[0]}:" in makefile


def test_one_ray_version_everywhere():
    versions = {doc["spec"].get("rayClusterSpec", doc["spec"])["rayVersion"]
                for _, doc in all_docs() if doc["kind"] in ("RayJob", "RayCluster")}
    assert versions == {RAY_PIN}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_PIN)}-py3\d+-gpu$", dockerfile, re.M)
    assert f"ray.__version__ == '{RAY_PIN}'" in dockerfile
    assert not re.search(r"ray\[[^\]]*\]==(?!" + re.escape(RAY_PIN) + ")", (CLUSTER / "ray-up.yaml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with '\\' continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_pins_cuda_torch_and_installs_the_project():
    steps = dockerfile_instructions()
    assert steps[0][0] == "FROM" and sum(1 for s in steps if s[0] == "FROM") == 1
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG")
    torch_pin = re.search(r"TORCH_VERSION \?= (\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert args["TORCH_VERSION"] == torch_pin
    assert re.match(r"https://download\.pytorch\.org/whl/cu\d+$", args["TORCH_INDEX_URL"])
    runs = " ".join(a for op, a in steps if op == "RUN")
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in runs
    assert 'pip install --no-cache-dir ".[ray]"' in runs
    python = re.search(r"-py3(\d+)-gpu", steps[0][1]).group(1)
    floor = re.match(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    assert int(python) >= int(floor)
    copied = {src for op, a in steps if op == "COPY" for src in a.split()[:-1] if not src.startswith("--")}
    assert {"diffseg", "jobs", "pyproject.toml", "README.md"} <= copied  # what `pip install .` reads
    assert all((ROOT / src).exists() for src in copied), f"COPY of a path not in the repository: {copied}"
    env = " ".join(a for op, a in steps if op == "ENV")
    assert "DIFFSEG_CACHE=/cache/diffseg" in env and "HF_HUB_OFFLINE" not in env


def test_model_cache_volume_is_where_the_image_caches():
    """Every file with a RayJob or RayCluster mounts the model cache, and only at $DIFFSEG_CACHE."""
    ray_files = {name for name, doc in all_docs() if doc["kind"] in ("RayJob", "RayCluster")}
    paths: dict[str, set[str]] = {}
    for name, doc in all_docs():
        if doc["kind"] in ("RayJob", "RayCluster"):
            paths.setdefault(name, set()).update(
                mount["mountPath"] for template in pod_templates(doc) for container in template["spec"]["containers"]
                for mount in container.get("volumeMounts", []) if mount["name"] == "model-cache")
    assert ray_files == {"rayjob.yaml", "raycluster.yaml"}
    assert paths == {name: {"/cache/diffseg"} for name in ray_files}


def test_secret_example_holds_placeholders_named_by_every_secret_ref():
    (secret,) = documents("secret-example.yaml")
    values = secret["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(values)
    assert all(v.startswith("REPLACE_WITH_") for k, v in values.items() if "KEY" in k)
    refs = {ref["secretRef"]["name"] for _, doc in all_docs() if doc["kind"] in ("RayJob", "RayCluster")
            for t in pod_templates(doc) for c in t["spec"]["containers"] for ref in c.get("envFrom", [])}
    assert refs == {secret["metadata"]["name"]}


def test_nightly_schedule_creates_uniquely_named_rayjobs_with_least_privilege():
    docs = {d["kind"]: d for d in documents("nightly.yaml")}
    cron = docs["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["schedule"] == "0 2 * * *"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    binding = docs["RoleBinding"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    (rule,) = docs["Role"]["rules"]
    assert rule == {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}
    job = documents("rayjob.yaml")[0]
    assert "name" not in job["metadata"] and job["metadata"]["generateName"]
    label = job["metadata"]["labels"]["app.kubernetes.io/name"]
    script = pod["containers"][0]["args"][0]
    assert f"app.kubernetes.io%2Fname%3D{label}" in script
    (volume,) = pod["volumes"]
    kustomization = yaml.safe_load((CLUSTER / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert volume["configMap"]["name"] == generator["name"] and generator["files"] == ["rayjob.yaml"]
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    assert kustomization["resources"] == ["nightly.yaml"]
    mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
    assert f"@{mount}/rayjob.yaml" in script


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not installed")
def test_kubectl_kustomize_renders_the_schedule_and_the_rayjob_configmap():
    rendered = subprocess.run(["kubectl", "kustomize", str(CLUSTER)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered.stdout)}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding", "CronJob", "ConfigMap"}
    assert docs["ConfigMap"]["metadata"]["name"] == "diffseg-rayjob"
    assert docs["ConfigMap"]["data"]["rayjob.yaml"] == (CLUSTER / "rayjob.yaml").read_text()


def test_ray_up_config_validates_against_rays_own_schema():
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())
    jsonschema.validate(config, schema)
    assert not any("ray[" in c for c in config["setup_commands"])  # Ray comes from the image only
