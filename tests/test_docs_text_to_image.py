"""docs/models-text-to-image.md is what its generator makes of the published results, and the results cover
every family bake serves with the figures the tests hold it to."""

from __future__ import annotations

import json

from benchmarks.text_to_image_table import PAGE, RESULTS, render
from serve.contract import pipelines
from tests.fixtures.diffusion_zoo import FAMILIES


def results() -> dict:
    return json.loads(RESULTS.read_text())


def test_the_page_is_generated_from_the_results() -> None:
    assert PAGE.read_text() == render(results()), "run python -m benchmarks.text_to_image_table"


def test_every_family_is_measured_and_meets_what_the_tests_require() -> None:
    rows = results()["families"]
    assert [row["name"] for row in rows] == list(FAMILIES)
    assert {row["family"] for row in rows} == {family.name for family in pipelines.FAMILIES}
    for row in rows:
        assert max(row["parity_max_difference"].values()) <= 1, row["name"]
        assert all(row["batched_equals_alone"].values()), row["name"]
        assert row["startup_s"] <= 2 * row["own_load_and_call_s"], row["name"]


def test_the_refusals_are_the_contracts_current_ones() -> None:
    for row in results()["refused"]:
        try:
            pipelines.family_of({"_class_name": row["pipeline"]})
        except pipelines.PipelineRefused as refusal:
            assert refusal.reason == row["reason"], "re-run python -m benchmarks.text_to_image_coverage"
        else:
            raise AssertionError(f"{row['pipeline']} is served now")
