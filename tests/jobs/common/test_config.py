"""Options, actor sizing (no deadlock on small machines), run identity and manifest redaction."""

from __future__ import annotations

import json

import pytest
from jobtest_utils import run_main

from diffseg import Vocabulary
from diffseg.lake.manifest import (
    RunConflictError,
    RunInfo,
    build_manifest,
    check_run_identity,
    record_run_identity,
    run_identity,
)
from diffseg.lake.store import OutputStore
from jobs.common.config import ConfigError, JobConfig, Node, resolve_resources
from jobs.segment.cli import build_parser, config_from_args, main

BASE = dict(input="in/", output="out/", vocab="cat", model="tiny")


def one_node(cpus: float, gpus: float = 0) -> list[Node]:
    return [Node("n1", cpus, gpus, 8 << 30)]


def test_cpu_only_actors_leave_a_cpu_for_reading():
    one = resolve_resources(JobConfig(**BASE), one_node(2))
    assert (one.actors, one.cpus_per_actor, one.gpus_per_actor, one.device, one.torch_threads) == (1, 1.0, 0, "cpu", 1)
    two = resolve_resources(JobConfig(**BASE, actors=2), one_node(2))
    assert two.cpus_per_actor == 0.5 and two.actors * two.cpus_per_actor + two.decode_cpus <= 2
    big = resolve_resources(JobConfig(**BASE), one_node(16))
    assert big.cpus_per_actor == 12 and big.torch_threads == 12
    with pytest.raises(ConfigError, match="read tasks would never run"):
        resolve_resources(JobConfig(**BASE, actors=2, cpus_per_actor=1), one_node(2))


def test_actors_are_sized_from_one_node_never_from_cluster_totals():
    # the cluster: a head with no CPU and two workers of 2 CPUs: 1 CPU per actor, one per node
    nodes = [Node("head", 0), Node("w1", 2, 0, 4 << 30), Node("w2", 2, 0, 4 << 30)]
    res = resolve_resources(JobConfig(**BASE), nodes)
    assert (res.actors, res.cpus_per_actor, res.capacity, res.cluster_cpus, res.nodes) == (2, 1.0, 2, 4, 3)
    with pytest.raises(ConfigError) as exc:
        resolve_resources(JobConfig(**BASE, cpus_per_actor=3), nodes)
    message = str(exc.value)
    assert "one actor of 3 CPU(s)" in message and "largest of the 3 alive node(s) has 2 CPUs" in message
    assert "--cpus-per-actor" in message and "--wait-for-nodes" in message
    waiting = resolve_resources(JobConfig(**BASE, cpus_per_actor=3, wait_for_nodes=True), nodes)
    assert (waiting.actors, waiting.capacity) == (1, 0)


def test_gpu_cluster_gets_one_actor_per_gpu_spread_over_nodes():
    res = resolve_resources(JobConfig(**BASE), one_node(32, 4))
    assert (res.actors, res.gpus_per_actor, res.cpus_per_actor, res.device) == (4, 1.0, 1.0, "cuda")
    half = resolve_resources(JobConfig(**BASE, gpus_per_actor=0.5), one_node(32, 4))
    assert half.actors == 8
    two = resolve_resources(JobConfig(**BASE, device="cpu"), [Node("a", 2, 1), Node("b", 2, 1), Node("h", 0)])
    assert (two.actors, two.device, two.gpus_per_actor) == (2, "cpu", 1.0)
    # 2 GPUs per actor but 1 GPU per node: no node holds one, whatever the cluster's total
    with pytest.raises(ConfigError, match="largest of the 2 alive node"):
        resolve_resources(JobConfig(**BASE, gpus_per_actor=2), [Node("a", 8, 1), Node("b", 8, 1)])
    # GPU workers that an autoscaler has not started yet: --wait-for-nodes keeps the request
    cold = resolve_resources(JobConfig(**BASE, gpus_per_actor=1, actors=3, wait_for_nodes=True), one_node(2))
    assert (cold.actors, cold.device, cold.capacity) == (3, "cuda", 0)
    cpu = resolve_resources(JobConfig(**BASE, gpus_per_actor=0), one_node(32, 4))
    assert cpu.device == "cpu"
    with pytest.raises(ConfigError, match="--device cuda"):
        resolve_resources(JobConfig(**BASE, device="cuda"), one_node(4))


def test_local_output_is_refused_on_several_nodes_unless_shared(tmp_path):
    from jobs.common.checks import check_output_visible

    store = OutputStore(str(tmp_path))
    check_output_visible(store, JobConfig(**BASE), 1)
    with pytest.raises(ConfigError, match="--shared-output"):
        check_output_visible(store, JobConfig(**BASE), 3)
    check_output_visible(store, JobConfig(**BASE, shared_output=True), 3)
    check_output_visible(OutputStore("memory://x/out"), JobConfig(**BASE), 3)


def test_cluster_options_parse_into_config_fields():
    import argparse

    from jobs.common.cluster_options import add_cluster_options, cluster_fields

    p = argparse.ArgumentParser()
    add_cluster_options(p)
    fields = cluster_fields(p.parse_args(["--device", "cpu", "--shared-output", "--lease-stale-minutes", "2"]))
    config = JobConfig(**BASE, **fields)
    assert (config.device, config.shared_output, config.lease_stale_s, config.break_lease) == ("cpu", True, 120.0, False)


def test_parser_defaults_and_bad_values(capsys):
    args = build_parser().parse_args(["s3://lake/in/", "s3://lake/out/", "--vocab", "cat, dog", "--model", "tiny",
                                      "--method", "diffsegmenter", "--save-scores", "--gpus-per-actor", "0.5"])
    config = config_from_args(args)
    assert config.methods == ("diffsegmenter",) and config.save_scores and config.gpus_per_actor == 0.5
    assert config.run_id == "default" and config.unit_size == 256 and config.max_pixels == 64_000_000
    for bad, word in ((["--batch-size", "0"], "--batch-size"), (["--max-error-fraction", "2"], "--max-error-fraction"),
                      (["--unit-size", "0"], "--unit-size")):
        with pytest.raises(SystemExit) as exc:
            main(["in", "out", "--vocab", "cat", "--model", "tiny", *bad])
        assert exc.value.code == 2 and word in capsys.readouterr().err


def test_preflight_errors_exit_2_before_any_image_is_read(tmp_path, capsys, s3_endpoint):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"never read")
    ok = ["--vocab", "cat", "--model", "tiny"]
    cases = [
        ([str(tmp_path / "in"), str(tmp_path / "out"), "--vocab", "cat", "--model", str(tmp_path / "nomodel")], "no such folder"),
        ([str(tmp_path / "in"), str(tmp_path / "out"), "--vocab", "cat", "--model", "s3://no-such-bucket-x/sd15/"],
         "bucket does not exist"),
        ([str(tmp_path / "in"), str(tmp_path / "out"), "--vocab", " , ", "--model", "tiny"], "vocabulary is empty"),
        ([str(tmp_path / "nothing"), str(tmp_path / "out"), *ok], "does not exist"),
        ([str(tmp_path / "in"), "s3://no-such-bucket-for-diffseg/out", *ok], "not writable"),
        ([str(tmp_path / "in"), str(tmp_path / "out"), *ok, "--method", "nope"], "unknown"),
        ([str(tmp_path / "in"), str(tmp_path / "out"), *ok, "--run-id", "a/b"], "run id"),
    ]
    for argv, word in cases:
        code, out, err = run_main(main, capsys, *argv)  # SystemExit: refused by the option parser itself
        assert code == 2, argv
        assert word in out + err, argv


def test_another_vocabulary_under_the_same_run_is_refused(tmp_path):
    store = OutputStore(str(tmp_path))
    vocab = Vocabulary.from_spec("cat, dog")
    identity = run_identity("tiny", vocab.hash("tiny"), ["diffsegmenter"], 512)
    assert check_run_identity(store, "default", identity) is True
    record_run_identity(store, "default", identity, vocab.names)  # at the first commit
    assert check_run_identity(store, "default", identity) is False
    other = Vocabulary.from_spec("cat, dog, bird")
    with pytest.raises(RunConflictError, match="--run-id") as exc:
        check_run_identity(store, "default", run_identity("tiny", other.hash("tiny"), ["diffsegmenter"], 512))
    assert "vocab_hash" in str(exc.value) and "cat, dog" in str(exc.value)
    with pytest.raises(RunConflictError, match="resolution"):
        check_run_identity(store, "default", run_identity("tiny", vocab.hash("tiny"), ["diffsegmenter"], 256))
    assert check_run_identity(store, "v2", identity) is True
    # issue 14.6: a run that committed nothing (it failed in the actor) may be redefined by the fixed command
    fixed = run_identity("tiny", vocab.hash("tiny"), ["diffsegmenter"], 256)
    assert check_run_identity(store, "default", fixed, has_commits=False) is True


def test_method_params_travel_as_a_dict_and_match_runs_recorded_as_json(tmp_path):
    """A run recorded when method_params was JSON text is still the same run when it is a dict now."""
    store = OutputStore(str(tmp_path))
    store.put_json("_runs/tuned.json", {"run_id": "tuned", "identity": {
        "model": "tiny", "vocab_hash": "h", "methods": ["diffsegmenter"], "resolution": 128,
        "method_params": '{"diffsegmenter": {"tau": 0.3}}'}})
    params = config_from_args(build_parser().parse_args(
        ["in/", "out/", "--vocab", "cat", "--model", "tiny", "--tau", "0.3"])).method_params
    assert params == {"diffsegmenter": {"tau": 0.3}}
    assert check_run_identity(store, "tuned", run_identity("tiny", "h", ["diffsegmenter"], 128, params)) is False
    with pytest.raises(RunConflictError, match="method_params"):
        check_run_identity(store, "tuned", run_identity("tiny", "h", ["diffsegmenter"], 128,
                                                        {"diffsegmenter": {"tau": 0.5}}))


def test_manifest_never_holds_credentials():
    config = JobConfig(input="s3://AKIAKEY:SECRETVALUE@lake/in/", output="s3://user:pw@lake/out/",
                       vocab="https://u:tok@host/classes.txt", model="s3://k:s@models/sd15/")
    vocab = Vocabulary.from_spec("cat")
    run = RunInfo(run_id="default", output=config.output, config=config.to_dict(), model=config.model, vocab=vocab,
                  vocab_spec=config.vocab, vocab_hash=vocab.hash(), started_at="now")
    text = json.dumps(build_manifest(run, "running", counts={}, timings={}, committed_units=[]))
    for secret in ("SECRETVALUE", "AKIAKEY", ":pw@", "tok@", "k:s@"):
        assert secret not in text
    assert "s3://lake/in/" in text and "s3://models/sd15/" in text


def test_recipe_options_given_are_part_of_the_run_identity(tmp_path):
    """Resuming a run with other --timesteps would mix maps of two recipes in one run: refused, named."""
    store = OutputStore(str(tmp_path))

    def identity(*extra):
        config = config_from_args(build_parser().parse_args(["in/", "out/", "--vocab", "cat", "--model", "tiny", *extra]))
        return run_identity("tiny", "h", config.methods, 128, config.method_params, config.recipe_changes())

    plain = identity()
    assert "recipe" not in plain and plain == identity("--context", "joint")  # defaults: runs recorded before match
    record_run_identity(store, "default", identity("--timesteps", "20,100"), ["cat"])
    assert check_run_identity(store, "default", identity("--timesteps", "20,100")) is False
    with pytest.raises(RunConflictError, match="recipe") as exc:
        check_run_identity(store, "default", identity("--timesteps", "100"))
    assert "[20, 100]" in str(exc.value) and "--run-id" in str(exc.value)
    with pytest.raises(RunConflictError, match="recipe"):
        check_run_identity(store, "default", identity("--timesteps", "20,100", "--context", "per_class"))
