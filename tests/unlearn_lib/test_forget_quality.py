"""The forget score must tell models a retrain could have produced from models it could not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_lib.audit.forget_quality import (
    bucket_points,
    combined_score,
    forget_score,
    record_epsilon,
    retrain_position,
)


def test_buckets_halve_the_points_every_half_unit_of_epsilon():
    assert bucket_points(0.0) == 1.0
    assert bucket_points(0.49) == 1.0
    assert bucket_points(0.5) == 0.5
    assert bucket_points(1.2) == 0.25
    assert bucket_points(3.43) == 2 / 2**7


def test_separable_records_score_the_floor_and_indistinguishable_ones_far_above_it():
    g = np.random.default_rng(0)
    retrained = g.normal(0, 1, (32, 100))
    separated = forget_score(g.normal(10, 1, (32, 100)), retrained, "loss")
    # Every threshold between the two groups separates them: epsilon is capped by the sample size.
    assert separated.epsilons == pytest.approx([math.log(31)] * 100, abs=1e-4)
    assert separated.score == pytest.approx(separated.floor)
    same = forget_score(g.normal(0, 1, (32, 100)), retrained, "loss")
    shifted = forget_score(g.normal(1, 1, (32, 100)), retrained, "loss")
    # At N = 32 sampling noise alone gives epsilons of 1-2 (the competition used N = 512), so the
    # comparison that matters is against the same-distribution level, not against 1.
    assert same.score > 3 * shifted.score > 3 * separated.score
    assert 0.15 < same.score < 1.0


def test_the_estimate_is_symmetric_in_direction_and_ignores_a_constant_shift_of_both():
    g = np.random.default_rng(1)
    u, r = g.normal(2, 1, 32), g.normal(0, 1, 32)
    assert record_epsilon(u, r) == pytest.approx(record_epsilon(-u, -r))
    assert record_epsilon(u, r) == pytest.approx(record_epsilon(u + 5, r + 5))


def test_combining_statistics_keeps_each_records_strongest_attack():
    g = np.random.default_rng(2)
    r = g.normal(0, 1, (32, 3))
    weak = forget_score(g.normal(0, 1, (32, 3)), r, "loss")
    strong = forget_score(np.c_[g.normal(10, 1, (32, 1)), g.normal(0, 1, (32, 2))], r, "pia")
    both = combined_score([weak, strong])
    assert both.statistic == "loss+pia"
    assert both.epsilons == [max(a, b) for a, b in zip(weak.epsilons, strong.epsilons, strict=True)]
    assert both.score <= min(weak.score, strong.score)


@pytest.mark.parametrize(
    ("u", "r", "message"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), "same records"),
        (np.zeros(4), np.zeros((4, 1)), "models, records"),
    ],
)
def test_mismatched_statistics_are_refused(u, r, message):
    with pytest.raises(ValueError, match=message):
        forget_score(u, r, "loss")


def test_too_few_models_or_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="at least 2 models"):
        record_epsilon(np.zeros(1), np.zeros(5))
    with pytest.raises(ValueError, match="non-finite"):
        record_epsilon(np.array([0.0, np.nan]), np.zeros(5))


def test_retrain_position_places_a_retrained_model_inside_and_a_remembering_one_below():
    g = np.random.default_rng(3)
    retrained = g.normal(1.0, 0.1, (19, 400))
    like = retrain_position(g.normal(1.0, 0.1, 400), retrained, "loss")
    # A 20th retrained model is outside the other 19's range on a record with chance 2/20.
    assert like.expected_within == pytest.approx(0.9)
    assert like.within == pytest.approx(0.9, abs=0.05)
    assert like.median_percentile == pytest.approx(0.5, abs=0.1)
    remembers = retrain_position(np.full(400, 0.5), retrained, "loss")
    assert (remembers.below, remembers.above, remembers.within) == (1.0, 0.0, 0.0)
    assert remembers.percentiles == [0.0] * 400
    over = retrain_position(np.full(400, 2.0), retrained, "loss")
    assert (over.below, over.above, over.median_percentile) == (0.0, 1.0, 1.0)
    assert over.to_dict()["within"] == 0.0


def test_retrain_position_refuses_a_single_retrain_and_mismatched_records():
    with pytest.raises(ValueError, match="at least 2 retrained models"):
        retrain_position(np.ones(3), np.ones((1, 3)), "loss")
    with pytest.raises(ValueError, match=r"\[records\] row"):
        retrain_position(np.ones(4), np.ones((3, 3)), "loss")
    with pytest.raises(ValueError, match="non-finite"):
        retrain_position(np.array([1.0, np.nan]), np.ones((3, 2)), "loss")
