"""Successive deletions: a model's lineage carries what it absorbed, and later erasures honour it."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from unlearn_lib.audit import class_figures, generate_class_samples
from unlearn_lib.data import ForgetTargets, select
from unlearn_lib.data.tensors import to_uint8
from unlearn_lib.errors import ConfigError, SelectionError
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.objectives import ForwardProcess, per_sample_denoising_error, predict_eps
from unlearn_lib.models.sampling import sample, trajectory_states
from unlearn_lib.unlearning import erase, make_unlearner, targets, task_from_selection
from unlearn_lib.unlearning.erasediff import (
    ANCHOR_SEED,
    anchored_labels,
    build_anchored_states,
    build_kept,
    build_kept_records,
    build_target,
)
from unlearn_lib.unlearning.lineage import LINEAGE_KEY, deletion_entry, exclude_prior
from unlearn_lib.unlearning.loop import UnlearningLoop
from unlearn_lib.unlearning.run import model_digest
from unlearn_lib.unlearning.targets import kept_mapping

PER_CLASS = 50
SEED = 1


def _with_deletions(model: DiffusionModel, digits, *targets: ForgetTargets) -> DiffusionModel:
    """A copy of ``model`` whose lineage says it absorbed ``targets``, in order (no training)."""
    out = model.clone()
    out.meta.lineage = {LINEAGE_KEY: [deletion_entry(select(digits, t), "erasediff", "0" * 64, None) for t in targets]}
    return out


def _targets_of(task, **options):
    """EraseDiff's remap target and "keep forgotten" term for ``task``, without training."""
    cfg = make_unlearner("erasediff", options).resolved(task)
    loop = UnlearningLoop("erasediff", task, cfg, None, progress=False)
    target = build_target(cfg, task, loop)
    return target, build_kept(cfg, task, loop, target)


def test_remap_targets_never_include_an_erased_class(digits, base_model):
    one = ForgetTargets.build(labels=[1])
    # Precondition that makes the test mean something: on these digits 1's nearest class is 8.
    # (The chain is the subject here, whatever picks the destinations: nearest-class is the simplest.)
    fresh = task_from_selection(digits, select(digits, one), base_model)
    target, kept = _targets_of(fresh, remap_to="nearest-class")
    assert target.mapping == {1: 8} and kept is None

    # 8 was erased earlier (sent onto 1, its nearest class), then 3 (sent onto 9): erasing 1 now must
    # send 1 onto neither 8 nor 3, and 8, which was sent onto the class erased now, follows the chain.
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[8]), ForgetTargets.build(labels=[3]))
    parent.meta.lineage[LINEAGE_KEY][0]["mapping"] = {"8": 1}
    parent.meta.lineage[LINEAGE_KEY][1]["mapping"] = {"3": 9}
    task = task_from_selection(digits, select(digits, one), parent)
    assert task.erased_labels == [3, 8] and task.retained_labels == [0, 2, 4, 5, 6, 7, 9]
    target, kept = _targets_of(task, remap_to="nearest-class")
    erased = {1, 3, 8}
    assert target.mapping[1] not in erased
    assert kept.target.mapping == {3: 9, 8: target.mapping[1]}
    assert set(kept.labels.unique().tolist()) == {3, 8}

    # The chain rule on its own: never an erased class, however the earlier targets were erased.
    m = kept_mapping([3, 8], {3: 5, 8: 1}, {5: 8, 1: 2}, [0, 2, 4], null_class=10)
    assert m == {3: 2, 8: 2}
    assert kept_mapping([3], {3: 5}, {}, [0, 2], null_class=10) == {3: 0}  # 5 erased, no chain: fallback
    with pytest.raises(Exception, match="every class has been erased"):
        kept_mapping([3], {}, {}, [], null_class=10)


def test_reroute_gives_an_earlier_class_its_own_destination_when_its_target_is_erased():
    # 3 was sent onto 8 and 5 onto 2; 8 is erased now and goes to 1. 5 keeps 2 (still retained).
    # 3 is rerouted, told which classes already receive an erased class now.
    asked = []

    def reroute(c, taken):
        asked.append((c, taken))
        return 9

    m = kept_mapping([3, 5], {3: 8, 5: 2}, {8: 1}, [0, 1, 2, 4, 6, 7, 9], null_class=10, reroute=reroute)
    assert m == {3: 9, 5: 2} and asked == [(3, {1, 2})]
    # Without it, 3 follows 8 onto 1: the chain.
    assert kept_mapping([3, 5], {3: 8, 5: 2}, {8: 1}, [0, 1, 2, 4, 6, 7, 9], null_class=10) == {3: 1, 5: 2}
    with pytest.raises(ConfigError, match="rerouted onto 8"):
        kept_mapping([3], {3: 8}, {8: 1}, [0, 1], null_class=10, reroute=lambda c, taken: 8)

    # What the model draws as an erased class now: where it was sent (along earlier mappings while
    # those have no images), whether or not the dataset still holds its own records.
    means = {8: torch.ones(2), 1: torch.zeros(2), 3: torch.full((2,), 3.0)}
    assert torch.equal(targets.drawn_as_mean(3, {3: 8}, means), torch.ones(2))
    assert torch.equal(targets.drawn_as_mean(5, {5: 4, 4: 8}, means), torch.ones(2))
    assert torch.equal(targets.drawn_as_mean(3, {}, means), means[3])  # sent nowhere: its own
    assert targets.drawn_as_mean(5, {5: 4, 4: 5}, means) is None  # a loop: no answer, not a hang
    assert targets.drawn_as_mean(6, {}, means) is None


def test_an_earlier_class_is_rerouted_to_its_own_nearest_distinct_class_not_along_the_chain(digits, base_model):
    # The pipeline's five deletions sent 3 onto 8, then erased 8 (onto 1) and 1 (onto 4): along the
    # chain 1, 3 and 8 all went onto 4 at once and that audit refused the model (fid_ratio 3.13).
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[3]))
    parent.meta.lineage[LINEAGE_KEY][0]["mapping"] = {"3": 8}
    sel = select(digits, ForgetTargets.build(labels=[8]))
    # Purged, as the pipeline's dataset is: nothing of 3 left to take a mean image from.
    sel.retain = [r for r in sel.retain if r.label != 3]
    sel.holdout = [r for r in sel.holdout if r.label != 3]
    task = task_from_selection(digits, sel, parent)
    assert task.erased is None or len(task.erased) == 0

    chained_target, chained = _targets_of(task, keep_forgotten_reroute="chain")
    assert chained.target.mapping == {3: chained_target.mapping[8]}
    target, kept = _targets_of(task, keep_forgotten_reroute="distinct")
    assert target.mapping == chained_target.mapping  # this deletion's own destination is unchanged
    new = kept.target.mapping[3]
    assert new not in (3, 8, target.mapping[8]) and new in task.retained_labels
    # Chosen by the base model's own confusion, as this deletion's destination is: a class it
    # seldom takes for what it draws as 3 now, or nearly, and the measurement is on the record.
    assert kept.target.confusion[3][new] <= targets.DISTINCT_TOLERANCE
    assert set(kept.labels.unique().tolist()) == {3}
    with pytest.raises(ConfigError, match="keep_forgotten_reroute must be one of chain, distinct"):
        make_unlearner("erasediff", {"keep_forgotten_reroute": "spread"}).resolved(task)


def test_an_erased_class_goes_to_the_nearest_class_the_base_model_keeps_apart_from_it(digits, base_model, evaluator):
    # After 3 and 5, 8's nearest class by mean image is 1, and this base model draws some 1s that it
    # and a judge take for 8s. Sent onto 1, a flawless erasure of 8 read 0.079 by the successive
    # benchmark's judge (its floor there 0.108), and erasing 1 afterwards dragged 5 and 8 along to a
    # new class: fid_ratio 1.65, refused (benchmarks/README.md, "Where an erased class is sent").
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[3]), ForgetTargets.build(labels=[5]))
    task = task_from_selection(digits, select(digits, ForgetTargets.build(labels=[8])), parent)
    nearest, _ = _targets_of(task, remap_to="nearest-class")
    assert nearest.mapping == {8: 1}
    target, _ = _targets_of(task)  # the defaults: the margin and the tolerance
    assert target.mode == "nearest-distinct"
    dest, tried = target.mapping[8], target.confusion[8]
    # Candidates are tried nearest first; the first of whose samples the model takes at most 2% for
    # 8, or nearly (within the margin), wins.
    tolerance = targets.DISTINCT_TOLERANCE
    assert next(iter(tried)) == 1 and tried[1] > tolerance
    assert list(tried)[-1] == dest and tried[dest] <= tolerance and dest not in (1, 3, 5, 8)
    assert all(v > tolerance for r, v in tried.items() if r != dest)
    assert target.describe()["confusion"]["8"] == {str(r): v for r, v in tried.items()}
    # The run's seed does not move it: the destination is the base model's and the classes'.
    again, _ = _targets_of(task, seed=SEED + 5)
    assert again.mapping == target.mapping
    # The judge, which the method never consults, sees the difference on the base model's own samples.
    samples = generate_class_samples(base_model, evaluator, 100, seed=SEED, classes=[1, dest])
    p8 = {c: float(samples.for_class(c)[1][:, 8].mean()) for c in (1, dest)}
    assert p8[dest] < 0.02 < p8[1], p8


def test_a_class_the_model_barely_keeps_apart_is_not_distinct(digits, base_model, evaluator, tmp_path, monkeypatch):
    # The model's samples of a class are drawn toward it, so it seldom prefers the erased label on
    # them outright; the odd look-alike only narrows the gap, and a judge sees it. Sent onto such a
    # class, an erasure reads as partial however complete it is (8 onto 1 in the CLI sequence:
    # 0.038-0.090 by the benchmark's judge; benchmarks/README.md, "A margin in the destination check").
    # Without the margin, 7 passes the check's tolerance: the suite's base prefers 3 on 0 or 1 of its
    # 200 samples of 7, by the machine that trained it (its float rounding differs), and the margin
    # takes 15 of them on both.
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    train = digits.train
    means = targets.class_means(torch.from_numpy(digits.load_images(train)), torch.tensor([r.label for r in train]))
    assert targets.by_distance(3, [7, 4], means) == [7, 4]
    outright, shares = targets.distinct_mapping(base_model, [3], [7, 4], means, margin=0.0)
    assert outright == {3: 7} and list(shares[3]) == [7] and shares[3][7] <= targets.DISTINCT_TOLERANCE
    mapping, shares = targets.distinct_mapping(base_model, [3], [7, 4], means)
    assert mapping == {3: 4} and shares[3][7] > 0.0 and shares[3][4] == 0.0
    samples = generate_class_samples(base_model, evaluator, 100, seed=SEED, classes=[7, 4])
    p3 = {c: float(samples.for_class(c)[1][:, 3].mean()) for c in (7, 4)}
    assert p3[4] < 0.01 < 0.02 < p3[7], p3


def test_a_measured_share_is_read_back_for_the_same_weights_only(base_model, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    share = targets.confused_share(base_model, 8, 1, 0)
    entries = list((tmp_path / "nearest-distinct").glob("*.json"))
    (entry,) = entries
    assert len(json.loads(entry.read_text())["chunks"]) == targets.DISTINCT_SAMPLES // targets.DISTINCT_CHUNK
    # The chunks are the whole measurement: all samples drawn and classified at once say the same.
    n, grid, draws = targets.DISTINCT_SAMPLES, list(targets.DISTINCT_TIMESTEPS), targets.DISTINCT_DRAWS
    x = sample(base_model, torch.full((n,), 1, dtype=torch.long), seed=0)
    fp = ForwardProcess(base_model.scheduler, base_model.device)

    def error(label: int) -> torch.Tensor:
        cond = torch.full((n,), label, dtype=torch.long)
        return per_sample_denoising_error(base_model.unet, fp, x, cond, grid, draws, 0).mean(1)

    # A sample counts unless the model explains it under 1 by the margin; with no margin, when it
    # prefers 8 at all, which is fewer samples (each setting is its own measurement).
    e8, e1 = error(8), error(1)
    within = float((e8 < (1 + targets.DISTINCT_MARGIN) * e1).float().mean())
    assert share > 0 and share == pytest.approx(within, abs=1.5 / n)
    outright = targets.confused_share(base_model, 8, 1, 0, margin=0.0)
    assert outright == pytest.approx(float((e8 < e1).float().mean()), abs=1.5 / n) and outright < share
    assert len(list((tmp_path / "nearest-distinct").glob("*.json"))) == 2
    (tmp_path / "nearest-distinct" / f"{targets.share_key(base_model, 8, 1, 0, margin=0.0)}.json").unlink()

    def must_not_sample(*args, **kwargs):
        raise AssertionError("sampled again for weights it has measured")

    monkeypatch.setattr(targets, "measure_confused_share", must_not_sample)
    assert targets.confused_share(base_model, 8, 1, 0) == share
    # Other weights, another class pair or another seed are another measurement.
    changed = base_model.clone()
    with torch.no_grad():
        next(changed.unet.parameters()).view(-1)[0] += 1e-3
    key = targets.share_key(base_model, 8, 1, 0)
    assert len({key, targets.share_key(changed, 8, 1, 0), targets.share_key(base_model, 8, 2, 0)}) == 3
    assert key != targets.share_key(base_model, 8, 1, 1)
    assert key != targets.share_key(base_model, 8, 1, 0, margin=0.1)
    # A torn or inconsistent entry is measured again and rewritten, never trusted.
    calls = []

    def measure(model, f, r, seed, screen=False, start=0, margin=targets.DISTINCT_MARGIN, allowed=0):
        calls.append((screen, start))
        return [0, 10, 0, 0][start:] if not screen else [0, 10][start:]

    monkeypatch.setattr(targets, "measure_confused_share", measure)
    for torn in ("{not json", '{"chunks": [1.0, 0, 0, 0]}', '{"chunks": [0, 0, 0, 0, 0]}', '{"chunks": [0, 51]}'):
        entry.write_text(torn)
        assert targets.confused_share(base_model, 8, 1, 0) == 0.05, torn
        assert json.loads(entry.read_text())["chunks"] == [0, 10, 0, 0]
    assert list((tmp_path / "nearest-distinct").iterdir()) == entries  # no temporary file left
    # A screen stops at the chunk that takes the count past the tolerance (4 of 200); the full
    # measurement goes on from there, and the screen's answer is the same once everything is measured.
    entry.unlink()
    calls.clear()
    assert targets.confused_share(base_model, 8, 1, 0, screen=True) == 0.1  # 10 of the first 100
    assert targets.confused_share(base_model, 8, 1, 0) == 0.05
    assert calls == [(True, 0), (False, 2)]
    assert targets.confused_share(base_model, 8, 1, 0, screen=True) == 0.1


def test_a_screen_stops_past_the_tolerance_and_goes_on_from_the_kept_chunks(base_model, tmp_path, monkeypatch):
    # The per-chunk counts stand in for the model (the sampling itself is tested above).
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    counts = {1: [2, 3, 0, 1], 2: [1, 1, 0, 2]}
    drawn = []

    def chunks(model, f, r, seed, start=0, margin=targets.DISTINCT_MARGIN):
        for i in range(start, len(counts[r])):
            drawn.append((r, i))
            yield counts[r][i]

    monkeypatch.setattr(targets, "share_chunks", chunks)
    # With none allowed, the first chunk rules 1 out (2 of 50).
    assert targets.confused_share(base_model, 8, 1, 0, screen=True, tolerance=0.0) == 0.04
    assert drawn == [(1, 0)]
    # With 4 allowed, the screen goes on from the kept chunk and stops at the one past it (5 of 100).
    assert targets.confused_share(base_model, 8, 1, 0, screen=True) == 0.05
    assert drawn == [(1, 0), (1, 1)]
    # Within the tolerance every chunk is measured (4 of 200), and the answer is that of all 200.
    assert targets.confused_share(base_model, 8, 2, 0, screen=True) == 0.02
    assert drawn[2:] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    # The full measurement goes on from the kept chunks, and each screen's answer stays what it was.
    assert targets.confused_share(base_model, 8, 1, 0) == 0.03
    assert drawn[6:] == [(1, 2), (1, 3)]
    assert targets.confused_share(base_model, 8, 1, 0, screen=True, tolerance=0.0) == 0.04
    assert targets.confused_share(base_model, 8, 1, 0, screen=True) == 0.05
    assert len(drawn) == 8


def test_when_every_candidate_is_confused_the_least_confused_wins_on_full_shares(base_model, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    # Screened, 1 (6 of its first 100) looks less confused than 2 (5 of 50); measured in full, 2 is.
    full = {1: [3, 3, 0, 0], 2: [5, 0, 0, 0], 4: [5, 5, 5, 5]}

    def measure(model, f, r, seed, screen=False, start=0, margin=targets.DISTINCT_MARGIN, allowed=0):
        counts = full[r][start:]
        total = 0
        for i, c in enumerate(counts):
            total += c
            if screen and total > allowed:
                return counts[: i + 1]
        return counts

    monkeypatch.setattr(targets, "measure_confused_share", measure)
    means = {c: torch.full((4,), float(c)) for c in (0, 1, 2, 4)}
    mapping, shares = targets.distinct_mapping(base_model, [0], [1, 2, 4], means, seed=0)
    # None is within the tolerance (4 of 200): each is measured in full, and the least confused wins.
    assert shares[0] == {1: 0.03, 2: 0.025, 4: 0.1} and mapping == {0: 2}
    # 4 of 200 are within it: the nearest such candidate wins at once.
    full[1] = [2, 1, 1, 0]
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "again"))
    mapping, shares = targets.distinct_mapping(base_model, [0], [1, 2, 4], means, seed=0)
    assert shares[0] == {1: 0.02} and mapping == {0: 1}
    # With no tolerance, the first candidate that no sample counts for wins (the rule before the margin).
    full[4] = [0, 0, 0, 0]
    mapping, shares = targets.distinct_mapping(base_model, [0], [1, 2, 4], means, seed=0, margin=0.0, tolerance=0.0)
    assert shares[0] == {1: 0.04, 2: 0.1, 4: 0.0} and mapping == {0: 4}


def test_a_class_that_already_holds_an_erased_class_is_tried_last(digits, base_model):
    # 3 was sent where 5 would go on its own. Both there, erasing that class later moves three
    # classes at once (benchmarks/README.md, "Where an erased class is sent").
    fresh = task_from_selection(digits, select(digits, ForgetTargets.build(labels=[5])), base_model)
    alone, _ = _targets_of(fresh)
    (dest,) = alone.mapping.values()
    assert alone.confusion[5][dest] <= targets.DISTINCT_TOLERANCE
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[3]))
    parent.meta.lineage[LINEAGE_KEY][0]["mapping"] = {"3": dest}
    task = task_from_selection(digits, select(digits, ForgetTargets.build(labels=[5])), parent)
    assert task.erased_mapping == {3: dest}
    target, kept = _targets_of(task)
    assert target.mapping[5] not in (3, dest) and dest not in target.confusion[5]
    assert kept.target.mapping == {3: dest}


def test_each_earlier_class_weighs_as_much_as_the_class_erased_now(digits, base_model):
    # Two earlier classes with unequal numbers of images: sharing one term, each weighed about half
    # of the class erased now, and the one with more images more; 8 came back that way when 6 was
    # erased after 3, 5, 8 and 1 (benchmarks/README.md, "Successive deletions").
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[8]), ForgetTargets.build(labels=[3]))
    task = task_from_selection(digits, select(digits, ForgetTargets.build(labels=[1])), parent)
    cfg = make_unlearner("erasediff").resolved(task)
    loop = UnlearningLoop("erasediff", task, cfg, None, progress=False)
    target = build_target(cfg, task, loop)
    kept = build_kept(cfg, task, loop, target)
    counts = torch.bincount(kept.labels)
    # As much as the class erased now: 3 held earlier classes better but weakened the erasure itself
    # (benchmarks/README.md, "Three times the class erased now").
    assert cfg.keep_forgotten_weight == 1.0
    assert counts[3] != counts[8] and kept.scale == 2.0
    batch = kept.draw(loop, 64)
    # Each image counts 1 / its class's image count: over draws the batch's weighted mean is the two
    # classes' average loss, not the loss of the class with more images.
    per_image = batch.weight.tolist()
    assert all(w in (pytest.approx(1 / counts[3].item()), pytest.approx(1 / counts[8].item())) for w in per_image)
    assert len({round(w, 9) for w in per_image}) == 2  # both classes drawn
    unscaled = dataclasses.replace(batch, scale=1.0)
    assert batch.loss(loop).item() == pytest.approx(kept.scale * unscaled.loss(loop).item(), rel=1e-5)

    half = dataclasses.replace(cfg, keep_forgotten_weight=0.5)
    assert build_kept(half, task, loop, target).scale == 1.0
    assert build_kept(dataclasses.replace(cfg, keep_forgotten_weight=0.0), task, loop, target) is None
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="keep_forgotten_weight must be a number >= 0"):
            dataclasses.replace(cfg, keep_forgotten_weight=bad).validate()
        with pytest.raises(ConfigError, match="distinct_margin must be a number >= 0"):
            dataclasses.replace(cfg, distinct_margin=bad).validate()
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="distinct_tolerance must be a share in"):
            dataclasses.replace(cfg, distinct_tolerance=bad).validate()
    # The destination check's defaults are the measured ones, which the library's functions default to.
    assert (cfg.distinct_margin, cfg.distinct_tolerance) == (targets.DISTINCT_MARGIN, targets.DISTINCT_TOLERANCE)


def test_keep_forgotten_compares_guided_predictions_as_sampling_does(digits, base_model):
    # 8 read 0.05-0.08 after erasing 6 with the conditional term, 0.01-0.02 with the guided one:
    # guidance multiplies what the conditional branch still knows (benchmarks/README.md).
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[8]), ForgetTargets.build(labels=[3]))
    task = task_from_selection(digits, select(digits, ForgetTargets.build(labels=[1])), parent)
    default = make_unlearner("erasediff").resolved(task)
    # Not the default: in whole sequences it held earlier classes at the cost of the class erased now.
    assert default.keep_forgotten_target == "conditional"
    cfg = dataclasses.replace(default, keep_forgotten_target="guided")
    loop = UnlearningLoop("erasediff", task, cfg, None, progress=False)
    target = build_target(cfg, task, loop)
    kept = build_kept(cfg, task, loop, target)
    w = parent.meta.guidance_scale
    assert kept.guidance == w and w != 1.0
    batch = kept.draw(loop, 32)
    # No label dropped to the null class: the guided combination holds the unconditional branch.
    assert set(batch.y_in.tolist()) <= {3, 8}
    assert torch.equal(batch.null, torch.full_like(batch.y_in, parent.null_class))

    # Before any step the model is its parent, so each image's error is w^2 |e_c(y) - e_c(dest)|^2:
    # the guided predictions differ only by the conditional branch, multiplied by the scale.
    dest = kept.target.table.to(batch.y_in.device)[batch.y_in]
    with torch.no_grad():
        e_y = predict_eps(parent.unet, batch.x_t, batch.t, batch.y_in)
        e_dest = predict_eps(parent.unet, batch.x_t, batch.t, dest)
        per_image = (w**2) * (e_y - e_dest).pow(2).flatten(1).mean(1)
        expected = kept.scale * (batch.weight * per_image).sum() / batch.weight.sum()
        assert batch.loss(loop).item() == pytest.approx(expected.item(), rel=1e-4)

    # conditional (the default): the conditional prediction alone.
    conditional = build_kept(default, task, loop, target)
    assert conditional.guidance is None and conditional.draw(loop, 8).guidance is None
    with pytest.raises(ConfigError, match="keep_forgotten_target must be one of guided, conditional"):
        dataclasses.replace(cfg, keep_forgotten_target="cfg").validate()


def test_keep_forgotten_can_replay_the_base_models_own_samples(digits, base_model):
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[8]), ForgetTargets.build(labels=[3]))
    task = task_from_selection(digits, select(digits, ForgetTargets.build(labels=[1])), parent)
    cfg = dataclasses.replace(make_unlearner("erasediff").resolved(task), keep_forgotten_replay=6)
    loop = UnlearningLoop("erasediff", task, cfg, None, progress=False)
    target = build_target(cfg, task, loop)
    destination = build_kept(cfg, task, loop, target)

    # replay: the parent's guided samples under each erased label (what sampling under it passes
    # through), as many per class as asked, the same for the same seed.
    replay_cfg = dataclasses.replace(cfg, keep_forgotten_inputs="replay")
    with torch.no_grad():  # as in a resumed run: the model trained has moved, the replay must not
        for p in loop.model.unet.parameters():
            p.add_(0.05)
    state = loop.gen.get_state()
    replay = build_kept(replay_cfg, task, loop, target)
    # Replaying consumes none of the loop's random draws.
    assert torch.equal(loop.gen.get_state(), state)
    assert replay.labels.unique().tolist() == [3, 8] and replay.counts[[3, 8]].tolist() == [6, 6]
    expected = sample(parent, replay.labels.cpu(), seed=cfg.seed + 1)
    assert torch.equal(replay.images.cpu(), to_uint8(expected))
    assert torch.equal(build_kept(replay_cfg, task, loop, target).images, replay.images)
    assert replay.target.mapping == destination.target.mapping and replay.scale == destination.scale

    # both: the destination's images and the replayed ones, each class still weighing the same.
    both = build_kept(dataclasses.replace(cfg, keep_forgotten_inputs="both"), task, loop, target)
    assert both.images.shape[0] == destination.images.shape[0] + replay.images.shape[0]
    assert torch.equal(both.counts, destination.counts + replay.counts)
    for name, bad in (("keep_forgotten_inputs", "samples"), ("keep_forgotten_replay", 0)):
        with pytest.raises(ConfigError, match=name):
            dataclasses.replace(cfg, **{name: bad}).validate()


def test_dataset_still_holding_earlier_deletions_is_excluded_with_one_line(digits, base_model, caplog):
    canary = ForgetTargets.build(subject_ids=["subject-canary"])
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[3]), canary)
    sel = select(digits, ForgetTargets.build(labels=[5]))
    canary_ids = {r.record_id for r in digits.records if r.subject_id == "subject-canary"}
    assert any(r.label == 3 for r in sel.retain) and canary_ids & {r.record_id for r in sel.retain}

    with caplog.at_level(logging.WARNING, logger="unlearn_lib.unlearning.lineage"):
        task = task_from_selection(digits, sel, parent)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0]
    excluded = sum(1 for r in sel.retain if r.label == 3 or r.record_id in canary_ids)
    assert f"still holds {excluded} training" in lines[0]

    assert 3 not in task.retain.labels.tolist() and not canary_ids & set(task.retain.record_ids)
    assert task.reference is not None and 3 not in task.reference.labels.tolist()
    assert not canary_ids & set(task.reference.record_ids)
    assert len(task.retain) == len(sel.retain) - excluded
    # The held records of the erased class are kept aside to anchor "keep forgotten", never retained.
    assert task.erased is not None and set(task.erased.labels.tolist()) == {3}
    assert task.forget.labels.unique().tolist() == [5]
    assert task.prior["excluded_train_records"] == excluded

    # A purged dataset (the pipeline's) says nothing and excludes nothing more.
    caplog.clear()
    purged = select(digits, ForgetTargets.build(labels=[5]))
    purged.retain = [r for r in purged.retain if r.label != 3 and r.record_id not in canary_ids]
    purged.holdout = [r for r in purged.holdout if r.label != 3 and r.record_id not in canary_ids]
    with caplog.at_level(logging.WARNING, logger="unlearn_lib.unlearning.lineage"):
        again, info = exclude_prior(purged, parent.meta.lineage)
    assert not caplog.records and not info.excluded_train and len(again.retain) == len(purged.retain)

    # Nothing left once the earlier deletions are taken out: refused, not trained on nothing.
    everything = _with_deletions(base_model, digits, *(ForgetTargets.build(labels=[c]) for c in range(1, 10)))
    with pytest.raises(SelectionError, match="no training record would remain"):
        task_from_selection(digits, select(digits, ForgetTargets.build(labels=[0])), everything)


def test_records_an_earlier_deletion_matched_stay_under_the_forgetting_constraint(digits, base_model):
    """``keep_forgotten_records_weight``: when the dataset still holds an earlier record deletion's
    records (the CLI with the same folder), L_f gains their record-deletion term, each distinct
    image regressed onto its retained look-alikes: out of the retain set alone they came back."""
    canary = ForgetTargets.build(subject_ids=["subject-canary"])
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[3]), canary)
    sel = select(digits, ForgetTargets.build(labels=[5]))
    canaries = [r for r in digits.records if r.subject_id == "subject-canary" and r.split == "train"]
    distinct = {r.sha256 for r in canaries}
    task = task_from_selection(digits, sel, parent)
    # One entry per distinct canary image (their copies count once), none of the erased class 3.
    assert task.erased_records is not None and sorted(task.erased_records.sha256) == sorted(distinct)
    assert set(task.erased_records.labels.tolist()) == {r.label for r in canaries}

    cfg = make_unlearner("erasediff", {"keep_forgotten_records_weight": "2"}).resolved(task)
    loop = UnlearningLoop("erasediff", task, cfg, None, progress=False)
    term = build_kept_records(cfg, task, loop)
    assert term is not None and term.weight == 2.0
    # Each image's look-alikes are retained images of its own label, never a deleted record.
    nb = term.target.neighbours.cpu()
    assert nb.shape == (len(distinct), cfg.neighbours)
    assert set(task.retain.labels[nb.flatten()].tolist()) == {r.label for r in canaries}
    assert not {task.retain.record_ids[i] for i in nb.flatten().tolist()} & {r.record_id for r in canaries}
    # Its batch is a record deletion's: the model's prediction against the look-alikes' redirection.
    batch = term.draw(loop, 16)
    assert batch.scale == 2.0 and batch.kept is None
    with torch.no_grad():
        pred = predict_eps(task.base.unet, batch.x_t, batch.t, batch.y_in)
        per_image = (pred - batch.target).pow(2).flatten(1).mean(1)
        expected = 2.0 * (batch.weight * per_image).sum() / batch.weight.sum()
        assert batch.loss(loop).item() == pytest.approx(expected.item(), rel=1e-4)
        # Before any step the base regenerates the canaries: their own noise is far from the redirection.
        assert per_image.mean() > 0

    # Off at 0 and with keep_forgotten=false; refused below 0.
    for off in ({"keep_forgotten_records_weight": "0"}, {"keep_forgotten": "false"}):
        assert build_kept_records(make_unlearner("erasediff", off).resolved(task), task, loop) is None
    with pytest.raises(ConfigError, match="keep_forgotten_records_weight must be a number >= 0"):
        make_unlearner("erasediff", {"keep_forgotten_records_weight": "-1"})

    # An image a retained record still holds stays learned: not kept forgotten.
    held = next(
        r for r in sel.retain if r.label == canaries[0].label and r.record_id not in {c.record_id for c in canaries}
    )
    sel_held = select(digits, ForgetTargets.build(labels=[5]))
    sel_held.retain = [dataclasses.replace(r, sha256=canaries[0].sha256) if r is held else r for r in sel_held.retain]
    kept_images = task_from_selection(digits, sel_held, parent).erased_records
    assert kept_images is not None and canaries[0].sha256 not in kept_images.sha256
    assert len(kept_images) == len(distinct) - 1

    # A purged dataset (the pipeline's) holds none: no term.
    purged = select(digits, ForgetTargets.build(labels=[5]))
    purged.retain = [r for r in purged.retain if r.subject_id != "subject-canary"]
    assert task_from_selection(digits, purged, parent).erased_records is None
    # Nor a lineage of class erasures only: their records are the class term's.
    classes_only = _with_deletions(base_model, digits, ForgetTargets.build(labels=[3]))
    assert task_from_selection(digits, sel, classes_only).erased_records is None


def test_labels_of_an_earlier_record_deletion_are_held_at_the_parents_sampling_states(digits, base_model):
    """``records_anchor_weight``: on data purged of an earlier record deletion's records (the
    pipeline's), nothing stands for them; the lineage keeps the labels they carried, and the model's
    predictions along the parent's own sampling trajectories under those labels are held onto the
    parent's (by the pipeline, a later class erasure without it brought the canaries back)."""
    canary = ForgetTargets.build(subject_ids=["subject-canary"])
    canaries = [r for r in digits.records if r.subject_id == "subject-canary"]
    parent = _with_deletions(base_model, digits, ForgetTargets.build(labels=[3]), canary)
    entries = parent.meta.lineage[LINEAGE_KEY]
    # The class erasure's labels are its forget_labels; a record deletion records what its records carried.
    assert entries[0]["record_labels"] == [] and entries[1]["record_labels"] == sorted({r.label for r in canaries})
    purged = select(digits, ForgetTargets.build(labels=[5]))
    purged.retain = [r for r in purged.retain if r.subject_id != "subject-canary"]
    purged.holdout = [r for r in purged.holdout if r.subject_id != "subject-canary"]
    task = task_from_selection(digits, purged, parent)
    assert task.erased_records is None and task.erased_record_labels == [7]

    cfg = make_unlearner(
        "erasediff", {"records_anchor_weight": "2", "records_anchor_samples": "6", "records_anchor_steps": "4"}
    ).resolved(task)
    loop = UnlearningLoop("erasediff", task, cfg, None, progress=False)
    term = build_anchored_states(cfg, task, loop)
    assert term is not None and term.weight == 2.0 and term.labels.tolist() == [7] * 6
    batch = term.draw(loop, 16)
    # The pool: every state of six 4-step trajectories under 7, sampled by the parent.
    assert term.x.shape[0] == 24 and set(term.y.tolist()) == {7}
    states, ts = trajectory_states(loop.frozen, term.labels, 4, seed=cfg.seed * 1_000_003 + ANCHOR_SEED)
    assert torch.equal(term.x, states.flatten(0, 1)) and torch.equal(term.t, ts.repeat_interleave(6))
    assert batch.scale == 2.0 and batch.kept is None
    with torch.no_grad():
        # Its target is the parent's prediction at the same input (label dropout included) ...
        assert torch.allclose(batch.target, predict_eps(parent.unet, batch.x_t, batch.t, batch.y_in), atol=1e-5)
        # ... so the term is zero at the parent and grows as the model drifts under 7.
        assert batch.loss(loop).item() < 1e-8
        for p in loop.params:
            p.add_(0.01 * torch.randn_like(p))
        assert batch.loss(loop).item() > 1e-4

    # A checkpoint's pool goes on only when it is this run's: one drawn under other labels is redrawn.
    again = build_anchored_states(cfg, task, loop)
    again.restore(term.state(), loop.device)
    assert torch.equal(again.x, term.x)
    other = build_anchored_states(cfg, dataclasses.replace(task, erased_record_labels=[2, 7]), loop)
    assert other.labels.tolist() == [2] * 3 + [7] * 3
    other.restore(term.state(), loop.device)
    assert other.x is None
    other.ensure(loop)
    # Two labels: each state keeps the label its trajectory was sampled under.
    states, _ = trajectory_states(loop.frozen, other.labels, 4, seed=cfg.seed * 1_000_003 + ANCHOR_SEED)
    assert torch.equal(other.x, states.flatten(0, 1)) and other.y.tolist() == ([2] * 3 + [7] * 3) * 4

    # By default it holds, at 1, the labels the records term cannot: here the data is purged of them.
    default = make_unlearner("erasediff", {}).resolved(task)
    assert default.records_anchor_weight is None and anchored_labels(default, task) == [7]
    auto = build_anchored_states(default, task, loop)
    assert auto is not None and auto.weight == 1.0 and auto.labels.tolist() == [7] * 64
    # On data that still holds the records (the CLI's folder), the records term holds them instead;
    # a set weight anchors every such label, and so does the default with the records term off.
    full = task_from_selection(digits, select(digits, ForgetTargets.build(labels=[5])), parent)
    assert full.erased_records is not None and 7 in full.erased_records.labels.tolist()
    assert anchored_labels(default, full) == []
    assert build_anchored_states(default, full, loop) is None
    assert anchored_labels(make_unlearner("erasediff", {"records_anchor_weight": "1"}).resolved(full), full) == [7]
    no_records_term = make_unlearner("erasediff", {"keep_forgotten_records_weight": "0"}).resolved(full)
    assert anchored_labels(no_records_term, full) == [7]
    # Label by label: a second earlier label with no record in the data is anchored beside the held 7.
    assert anchored_labels(default, dataclasses.replace(full, erased_record_labels=[2, 7])) == [2]
    no_earlier_terms = make_unlearner("erasediff", {"keep_forgotten": "false"}).resolved(task)
    assert build_anchored_states(no_earlier_terms, task, loop) is None
    # Off at 0, with keep_forgotten=false, for a lineage of class erasures only, and for an entry
    # written before record_labels existed; a label erased as a class (earlier or now) is the class
    # terms' business, and one this deletion's own records carry is not held to the parent.
    zero = make_unlearner("erasediff", {"records_anchor_weight": "0"}).resolved(task)
    assert build_anchored_states(zero, task, loop) is None
    assert make_unlearner("erasediff", {"records_anchor_weight": "none"}).config.records_anchor_weight is None
    off = make_unlearner("erasediff", {"records_anchor_weight": "1", "keep_forgotten": "false"}).resolved(task)
    assert build_anchored_states(off, task, loop) is None
    classes_only = _with_deletions(base_model, digits, ForgetTargets.build(labels=[3]))
    assert task_from_selection(digits, purged, classes_only).erased_record_labels == []
    old = _with_deletions(base_model, digits, canary)
    del old.meta.lineage[LINEAGE_KEY][0]["record_labels"]
    assert task_from_selection(digits, purged, old).erased_record_labels == []
    seven = select(digits, ForgetTargets.build(labels=[7]))
    assert task_from_selection(digits, seven, parent).erased_record_labels == []
    seven_gone = _with_deletions(base_model, digits, canary, ForgetTargets.build(labels=[7]))
    assert task_from_selection(digits, purged, seven_gone).erased_record_labels == []
    one_seven = next(r for r in digits.train if r.label == 7 and r.subject_id != "subject-canary")
    more_sevens = select(digits, ForgetTargets.build(record_ids=[one_seven.record_id]))
    assert task_from_selection(digits, more_sevens, parent).erased_record_labels == []
    with pytest.raises(ConfigError, match="records_anchor_weight must be a number >= 0"):
        make_unlearner("erasediff", {"records_anchor_weight": "-1"})
    with pytest.raises(ConfigError, match="records_anchor_samples and records_anchor_steps must be >= 1"):
        make_unlearner("erasediff", {"records_anchor_steps": "0"})


def test_the_records_anchor_holds_the_model_under_the_deleted_records_labels(digits, base_model):
    """A short class erasure on purged data: with the anchor, the model's predictions under the
    deleted records' label move less from the parent's along the parent's trajectories."""
    canary = ForgetTargets.build(subject_ids=["subject-canary"])
    parent = _with_deletions(base_model, digits, canary)
    purged = select(digits, ForgetTargets.build(labels=[1]))
    purged.retain = [r for r in purged.retain if r.subject_id != "subject-canary"]
    task = task_from_selection(digits, purged, parent)
    states, ts = trajectory_states(parent, torch.full((16,), 7), 10, seed=123)
    x, t = states.flatten(0, 1), ts.repeat_interleave(16)
    y = torch.full((x.shape[0],), 7)

    def drift(model: DiffusionModel) -> float:
        with torch.no_grad():
            return (predict_eps(model.unet, x, t, y) - predict_eps(parent.unet, x, t, y)).pow(2).mean().item()

    common = {"steps": 30, "seed": 0}
    free = make_unlearner("erasediff", {**common, "records_anchor_weight": 0}).run(task, progress=False)
    held = make_unlearner("erasediff", {**common, "records_anchor_weight": 3}).run(task, progress=False)
    assert held.config["resolved_target"]["records_anchor"] == {"labels": [7], "trajectories": 64, "weight": 3.0}
    assert "records_anchor" not in free.config["resolved_target"]
    # Measured: 0.011 against 0.022 (the 30 steps on 2 cores, seed 0).
    assert drift(held.model) < 0.7 * drift(free.model)


@pytest.mark.extended  # two full class erasures (~4 min on 2 cores): make test-extended
def test_erasing_5_after_3_keeps_both_forgotten(
    class3_model_dir, base_model_dir, base_model, digits_dir, evaluator, tmp_path
):
    out = tmp_path / "no-3-5"
    result, record = erase(
        class3_model_dir, digits_dir, ForgetTargets.build(labels=[5]), "erasediff", out, progress=False
    )

    # Lineage: both deletions, each pointing at its parent.
    deletions = DiffusionModel.load(out).meta.lineage[LINEAGE_KEY]
    assert [d["targets"]["labels"] for d in deletions] == [[3], [5]]
    assert deletions[0]["parent_model_sha256"] == model_digest(base_model_dir)
    assert deletions[1]["parent_model_sha256"] == model_digest(class3_model_dir)
    first = json.loads((class3_model_dir / "unlearning.json").read_text())
    assert deletions[0]["forget_set_sha256"] == first["selection"]["forget_set_sha256"]
    assert deletions[1]["forget_set_sha256"] == record["selection"]["forget_set_sha256"]
    resolved = record["config"]["resolved_target"]
    assert not {3, 5} & (set(resolved["mapping"].values()) | set(resolved["kept_mapping"].values()))
    assert record["prior_deletions"]["excluded_train_records"] > 0  # the session's dataset holds the 3s

    # The independent classifier's verdict: 3 stays forgotten (it came back to 0.92 before), 5 is
    # forgotten, and the seven classes never erased keep their accuracy (450 samples: ~1.5 points
    # of binomial error per model, hence 5 points of tolerance).
    before = class_figures(generate_class_samples(base_model, evaluator, PER_CLASS, seed=SEED), [3, 5])
    after = class_figures(generate_class_samples(DiffusionModel.load(out), evaluator, PER_CLASS, seed=SEED), [3, 5])
    assert before.forgotten_probability[3] > 0.7 and before.forgotten_probability[5] > 0.7
    assert after.forgotten_probability[3] < 0.1, after.to_dict()
    assert after.forgotten_probability[5] < 0.1, after.to_dict()
    assert after.retained_accuracy >= before.retained_accuracy - 0.05, (after.to_dict(), before.to_dict())
