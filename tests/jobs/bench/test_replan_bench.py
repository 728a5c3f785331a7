"""python -m jobs.bench.replan: the job's listing and planning against a sharded done index, end to end on a
small lake (the figures are printed, never asserted; what is asserted is that each case plans what it must)."""

import json

from jobs.bench.listing import VirtualKeys
from jobs.bench.replan import main, virtual_keys


def test_virtual_keys_are_the_stand_in_s_keys():
    keys = VirtualKeys(1000, "new/")
    assert virtual_keys(1000, "new/").to_pylist() == [f"s3://lake/{keys.key(i)}" for i in range(1000)]


def test_each_case_plans_what_it_must(capsys):
    assert main(["--done", "3000", "--delta", "700", "--cases", "delta,full,fresh", "--latency", "0.001"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    cases = {r["case"]: r for r in rows if "case" in r}
    assert (cases["delta"]["listed"], cases["delta"]["todo"], cases["delta"]["units"]) == (700, 700, 3)
    assert (cases["full"]["listed"], cases["full"]["todo"], cases["full"]["units"]) == (3000, 0, 0)
    assert (cases["fresh"]["listed"], cases["fresh"]["todo"], cases["fresh"]["units"]) == (3000, 3000, 12)
