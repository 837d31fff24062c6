"""The result record is the contract between runner, sweeps, reports and tests: its shape is pinned by
golden files (one per protocol) that the loader reads and the writer reproduces.

Regenerate the golden files after an intended change of the record with
``BENCH_UPDATE_GOLDEN=1 pytest tests/test_records.py`` and review the diff.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.results import READABLE_SCHEMAS, SCHEMA_VERSION, RunResult, load_results, read_result
from bench.runner import run_cells
from bench.spec import RunSpec

GOLDEN = Path(__file__).parent / "golden"
CELLS = {  # protocol -> the cell whose record is pinned
    "fewshot": RunSpec("zero_shot", "synthetic", 2, 1),
    "base2new": RunSpec("coop", "synthetic", 2, 1, protocol="base2new", overrides=(("epochs", 2),)),
}
VOLATILE = {  # what differs between machines and runs: compared by type, not value
    "provenance": None,
    "timing_s": None,
    "memory": None,
    ("backbone", "open_clip"): None,
}


def _stable(record: dict) -> dict:
    """The record with its volatile sections and fields replaced by their JSON types."""
    out = json.loads(json.dumps(record))
    for key in VOLATILE:
        section, _, name = (key, None, None) if isinstance(key, str) else (key[0], None, key[1])
        if name is None:
            out[section] = {k: type(v).__name__ for k, v in out[section].items()}
        else:
            out[section][name] = type(out[section][name]).__name__
    return out


def _close(a, b, path="record") -> None:
    """Equal, floats within 1e-6 (the tiny model's numbers on another CPU of the same kind)."""
    if isinstance(a, float) or isinstance(b, float):
        assert (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        ), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), (path, sorted(set(a) ^ set(b)))
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("protocol", sorted(CELLS))
def test_golden_record_is_read_and_written_back_unchanged(protocol):
    raw = json.loads((GOLDEN / f"record_{protocol}.json").read_text())
    result = RunResult.from_json(raw, source=protocol)
    assert result.ok and result.spec.protocol == protocol and result.schema_version == SCHEMA_VERSION
    assert result.to_json() == raw
    assert 0 <= result.metrics.top1 <= 1 and result.backbone.activation == "gelu"


@pytest.mark.parametrize("protocol", sorted(CELLS))
def test_the_runner_writes_the_golden_record(protocol, run_options):
    run_cells([CELLS[protocol]], run_options)
    (written,) = load_results(run_options.results_root)
    ours = _stable(written.to_json())
    golden_file = GOLDEN / f"record_{protocol}.json"
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        golden_file.write_text(json.dumps(written.to_json(), indent=1, sort_keys=True) + "\n")
    _close(ours, _stable(json.loads(golden_file.read_text())))


def test_a_record_of_another_shape_is_one_error_naming_the_field(tmp_path):
    raw = json.loads((GOLDEN / "record_fewshot.json").read_text())
    cases = {
        "unknown field backbone.colour": lambda r: r["backbone"].update(colour="red"),
        "spec.shots is 'four'": lambda r: r["spec"].update(shots="four"),
        "metrics.top1 is True": lambda r: r["metrics"].update(top1=True),
        "spec lacks method": lambda r: r["spec"].pop("method"),
        "field 'data' must be a JSON object": lambda r: r.update(data=[1]),
    }
    for message, damage in cases.items():
        record = json.loads(json.dumps(raw))
        damage(record)
        path = tmp_path / "k02-s1-x.json"
        path.write_text(json.dumps(record))
        with pytest.raises(BenchError) as err:
            read_result(path)
        assert message in str(err.value) and str(path) in str(err.value)
        assert "\n" not in str(err.value)


def test_records_of_the_previous_schema_are_read():
    raw = json.loads((GOLDEN / "record_fewshot.json").read_text())
    assert 1 in READABLE_SCHEMAS
    old = RunResult.from_json({**raw, "schema_version": 1}, source="v1")
    assert old.schema_version == SCHEMA_VERSION and old.metrics.top1 == raw["metrics"]["top1"]
