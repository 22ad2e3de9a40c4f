"""The grid's statistics on synthetic data where the truth is known."""
import numpy as np
import pytest
import torch

from maskgit_inpaint import evaluation, grid_stats, stats
from maskgit_inpaint.swd import PatchSets, _normalise

SETTINGS = grid_stats.Settings(confidence=0.95, resamples=200, seed=0)


def test_the_paired_test_finds_a_known_difference_and_its_interval_holds_it():
    rng = np.random.default_rng(0)
    scene = rng.normal(20, 3, 200)  # per-image difficulty, shared by both methods: what pairing removes
    a, b = scene + rng.normal(0, 0.5, 200), scene + 0.3 + rng.normal(0, 0.5, 200)
    cmp = stats.paired_means(a, b, level=0.95, resamples=500, seed=0)
    assert cmp.p < 1e-3 and cmp.lo < -0.3 < cmp.hi and cmp.hi < 0
    assert stats.verdict(cmp.difference, cmp.p, alpha=0.05, lower_is_better=False) == "worse"
    assert stats.verdict(cmp.difference, cmp.p, alpha=0.05, lower_is_better=True) == "better"


def test_identical_distributions_are_tied_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    trials = 400
    rejected = sum(stats.paired_means(rng.normal(0, 1, 100), rng.normal(0, 1, 100), level=0.95, resamples=50, seed=i).p < 0.05
                   for i in range(trials))
    assert 0.02 <= rejected / trials <= 0.085  # nominal 0.05; binomial sd at 400 trials ~0.011


def test_bootstrap_intervals_cover_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    trials, covered = 300, 0
    for i in range(trials):
        values = rng.gamma(2.0, 1.5, 60)  # skewed, true mean 3.0
        iv = stats.mean_interval(values, level=0.9, resamples=400, seed=i)
        covered += iv.lo <= 3.0 <= iv.hi
    assert 0.84 <= covered / trials <= 0.95  # nominal 0.90; binomial sd ~0.017


def test_holm_adjusts_step_down_and_skips_untested():
    adjusted = stats.holm(np.array([0.01, 0.04, np.nan, 0.03, 0.2]))
    # m = 4 tests: 0.01*4, max(0.04, 0.03*3=0.09), max(0.09, 0.04*2=0.08), max(0.09, 0.2*1)
    np.testing.assert_allclose(adjusted, [0.04, 0.09, np.nan, 0.09, 0.2])


def test_the_split_is_seeded_disjoint_and_whole():
    halves = stats.split(200, 0.5, seed=3)
    assert len(halves.selection) == len(halves.report) == 100
    assert not set(halves.selection) & set(halves.report) and set(halves.selection) | set(halves.report) == set(range(200))
    assert np.array_equal(stats.split(200, 0.5, seed=3).report, halves.report)
    assert not np.array_equal(stats.split(200, 0.5, seed=4).report, halves.report)
    counts = stats.resample_counts(200, halves.report, resamples=30, seed=0)
    assert (counts[:, halves.selection] == 0).all() and (counts.sum(1) == 100).all()


def _scenes(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * torch.linspace(-1, 1, size)[None, None, :, None].expand(n, 3, size, size)
    return (base + 0.2 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)


def _patch_sets(fake, real):
    sets = PatchSets(seed=0)
    for start in range(0, len(fake), 16):
        sets.add(fake[start:start + 16], real[start:start + 16])
    return sets


def _exact_resample(sets: PatchSets, images: torch.Tensor) -> float:
    """The distance of a resample computed the slow way: rebuild the patch sets with the drawn images, sort."""
    per_level = []
    for level in sets._filled():
        rows = torch.cat([torch.nonzero(level.owner == i).flatten() for i in images.tolist()])
        a, b = _normalise(level.fake[rows]) @ level.proj, _normalise(level.real[rows]) @ level.proj
        per_level.append((torch.sort(a, 0).values - torch.sort(b, 0).values).abs().mean())
    return float(torch.stack(per_level).mean() * 1e3)


def test_the_binned_swd_bootstrap_tracks_exact_resampling():
    real = _scenes(48, 0)
    fake = torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1)
    sets = _patch_sets(fake, real)
    counts = stats.resample_counts(48, None, resamples=40, seed=0)
    fast, = sets.resample([(counts, None)])
    draws = [torch.repeat_interleave(torch.arange(48), row.long()) for row in counts]
    exact = torch.tensor([_exact_resample(sets, d) for d in draws])
    assert torch.corrcoef(torch.stack([fast, exact]))[0, 1] > 0.75
    assert 0.8 < float(fast.std() / exact.std()) < 1.4  # 1.06-1.14 on the embedded val images, 1.29 here: if anything wide
    # Repeated images lift a resample's distance above the set's; the fast replicates show the same lift.
    assert exact.mean() > sets.distance() and abs(float(fast.mean() - exact.mean())) < float(exact.std())


def test_the_swd_interval_shrinks_as_images_grow():
    widths = []
    for n in (16, 64):
        real = _scenes(n, 1)
        sets = _patch_sets(torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1), real)
        replicates, = sets.resample([(stats.resample_counts(n, None, resamples=200, seed=0), None)])
        iv = stats.replicate_interval(sets.distance(), replicates.numpy(), level=0.95)
        assert iv.lo <= iv.value <= iv.hi
        widths.append(iv.hi - iv.lo)
    assert widths[1] < 0.75 * widths[0]  # ~1/sqrt(4) = 0.5 expected


def test_a_paired_swd_comparison_tells_light_from_heavy_blur_and_not_a_cell_from_itself():
    real = _scenes(64, 2)
    blurred = _patch_sets(torch.nn.functional.avg_pool2d(real, 3, stride=1, padding=1), real)
    noisy = _patch_sets(torch.nn.functional.avg_pool2d(real, 7, stride=1, padding=3), real)
    counts = stats.resample_counts(64, None, resamples=200, seed=0)
    (rb,), (rn,) = blurred.resample([(counts, None)]), noisy.resample([(counts, None)])
    cmp = stats.paired_replicates(blurred.distance(), noisy.distance(), rb.numpy(), rn.numpy(), level=0.95)
    assert cmp.hi < 0 and cmp.p < 1e-3
    same = stats.paired_replicates(blurred.distance(), blurred.distance(), rb.numpy(), rb.numpy(), level=0.95)
    assert same.difference == 0 and same.p == 1.0


def _cell(method, values, selection_boost=0.0, halves=None, **axes):
    """A synthetic cell: per-image PSNR `values`, raised by `selection_boost` on the selection half."""
    v = np.array(values, dtype=float)
    if halves is not None:
        v[halves.selection] += selection_boost
    per_image = {m: v[None].copy() for m in evaluation.PER_IMAGE}
    swd = evaluation.SetLevel(50.0, np.full(20, 50.0), selection=50.0, report=50.0, report_replicates=np.full(20, 50.0))
    row = {"method": method, "mask": "center", "schedule": axes.get("schedule"), "T": axes.get("T"),
           "sweet_spot": axes.get("sweet_spot"), "status": "ok", "psnr_masked": float(v.mean())}
    return evaluation.Cell(row, evaluation.Evidence(per_image, {"swd": swd, "swd_masked": swd, "fid": evaluation.SetLevel(float("nan"), None)}))


def test_the_held_out_pick_never_reports_a_figure_from_a_selection_image():
    halves = stats.split(40, 0.5, seed=0)
    rng = np.random.default_rng(0)
    base = rng.normal(20, 1, 40)
    # The lucky cell shines on the selection half only: it wins the pick, and its report shows the plain truth.
    lucky = _cell("maskgit", base, selection_boost=5.0, halves=halves, schedule="linear", T=4, sweet_spot=4)
    honest = _cell("maskgit", base + 0.5, schedule="cosine", T=4, sweet_spot=4)
    first = _cell("maskgit", base - 1.0, schedule="linear", T=1, sweet_spot=1)
    cells = [lucky, honest, first, _cell("telea", base - 2.0), _cell("vq_ceiling", base + 3.0)]
    result = grid_stats.compute(cells, halves, SETTINGS)
    pick = result.picks["center"]["psnr_masked"]
    assert pick.cell["schedule"] == "linear" and pick.cell["T"] == 4
    assert pick.selection == pytest.approx(base[halves.selection].mean() + 5.0)
    assert pick.report.value == pytest.approx(base[halves.report].mean())
    assert pick.report.lo <= base[halves.report].mean() <= pick.report.hi < base[halves.selection].mean() + 5.0
    assert pick.against["telea"]["verdict"] == "better" and pick.against["vq_ceiling"]["verdict"] == "worse"
    # On the report half the honest cell is better than the pick: a verdict of its own, not a tie.
    table = result.table.set_index(["method", "schedule"])
    assert table.loc[("maskgit", "cosine"), "psnr_masked_vs_best"] == "better"
    best_rows = result.comparisons[(result.comparisons.reference == "best") & (result.comparisons.metric == "psnr_masked")]
    assert (best_rows.images == "report half").all()
