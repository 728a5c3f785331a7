"""The declarative cluster configs parse, and every command they hold runs the real CLI with options its
parser accepts (the RayJob entrypoint, and the submit commands quoted in comments and docs/job.md)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.segment.cli import build_parser, config_from_args

ROOT = Path(__file__).resolve().parents[3]
CLUSTER = ROOT / "cluster"


def check_command(command: str) -> None:
    """`command` contains `python -m jobs.segment ARGS`; ARGS must parse into a valid JobConfig."""
    words = shlex.split(command)
    start = next(i for i in range(len(words) - 2) if words[i : i + 3] == ["python", "-m", "jobs.segment"])
    config_from_args(build_parser().parse_args(words[start + 3 :]))


def quoted_commands(text: str, markdown: bool) -> list[str]:
    """Commands quoted in '#' comments (YAML) or in fenced code blocks (Markdown), with shell '\\'
    continuations and Python implicit string concatenation joined."""
    if markdown:
        lines = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)).splitlines()
    else:
        lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines() if line.lstrip().startswith("#")]
    joined = re.sub(r'"\s*\n\s*"', "", re.sub(r"\\\n\s*", " ", "\n".join(lines)))
    return [line[line.index("python -m jobs.segment"):].split("  #")[0].rstrip().rstrip('",)')
            for line in joined.splitlines() if "python -m jobs.segment" in line]


def test_rayjob_runs_the_real_cli_on_gpu_workers():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    check_command(spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    assert "env_vars" in yaml.safe_load(spec["runtimeEnvYAML"])
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for w in workers for c in w["template"]["spec"]["containers"]]
    assert any(gpus)
    args = build_parser().parse_args(shlex.split(spec["entrypoint"])[3:])
    assert args.gpus_per_actor >= 1  # explicit: the job waits for GPU pods rather than falling back to CPU


def test_raycluster_autoscales_gpu_workers():
    cluster = yaml.safe_load((CLUSTER / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["enableInTreeAutoscaling"] is True
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert group["minReplicas"] == 0 < group["maxReplicas"]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]


def test_ray_up_config_has_gpu_workers_and_installs_the_project():
    config = yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"].startswith(("g", "p")) and worker["max_workers"] > 0
    assert any("pip install" in c and "/home/ubuntu/diffseg" in c for c in config["setup_commands"])


def test_runtime_env_is_valid_and_holds_no_credentials():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime-env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of the keys
    assert ".venv/" in env["excludes"]
    assert not any(k.startswith("AWS_") and "KEY" in k for k in env["env_vars"])


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml", "ray-up.yaml", "runtime-env.yaml", "../docs/job.md"])
def test_quoted_commands_are_accepted_by_the_parser(name):
    path = CLUSTER / name
    commands = quoted_commands(path.read_text(), markdown=name.endswith(".md"))
    if name != "rayjob.yaml":
        assert commands, f"{name} quotes no command"
    for command in commands:
        check_command(command)


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycluster.yaml"])
def test_the_head_plans_into_a_volume_of_its_own(name):
    """Planning spills the listing to the driver's TMPDIR (~60 B per listed key: ~6 GB at 10^8 images); the
    head pod gives it a sized emptyDir instead of the container's writable layer."""
    doc = yaml.safe_load((CLUSTER / name).read_text())
    head = (doc["spec"].get("rayClusterSpec") or doc["spec"])["headGroupSpec"]["template"]["spec"]
    container = head["containers"][0]
    tmpdir = {e["name"]: e["value"] for e in container["env"]}["TMPDIR"]
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in head["volumes"]}[mounted[tmpdir]]
    assert "emptyDir" in volume and volume["emptyDir"]["sizeLimit"].endswith("Gi")
    assert int(volume["emptyDir"]["sizeLimit"][:-2]) >= 8
