import math

import pytest
import torch
import torch.nn as nn

from maskgit_inpaint import masks, sampling, schedules
from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.training.masking import random_token_mask

K, N = 16, 36


class Probe(nn.Module):
    """A real (tiny, random) transformer that records the ids of each call and how many [MASK] ids it saw per image."""

    def __init__(self, peaked: bool = False, n_tokens: int = N, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # the same weights every run, the global generator left as it was
            torch.manual_seed(seed)
            self.inner = MaskedTokenTransformer(TransformerConfig(codebook_size=K, n_tokens=n_tokens, n_layer=1, n_head=1, n_embd=16))
            # An untrained pos_emb is zero, which gives every masked position the same logits; random ones tell them apart.
            nn.init.normal_(self.inner.pos_emb)
        self.config = self.inner.config
        self.peaked = peaked
        self.masked_seen: list[list[int]] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, ids):
        self.masked_seen.append((ids == K).sum(1).tolist())
        self.inputs.append(ids.clone())
        logits = self.inner(ids)
        # Peaked logits make every draw deterministic: then batching must not change anything. The Gumbel
        # noise spans about 20, and a random net's top two logits can lie 2e-4 apart: x1000 left ~7% of nets flaky.
        return logits * 1e6 if self.peaked else logits


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_schedules_decrease_from_one_to_zero(name):
    r = torch.linspace(0, 1, 101)
    g = schedules.gamma(name, r, 256)
    assert g[0] >= 1 - 1 / 256 and g[-1] == pytest.approx(1e-6, abs=1e-5)  # exp starts at 1 - 1/N, as in MaskGIT
    assert torch.all(g[1:] <= g[:-1] + 1e-12)


def test_log_and_exp_take_each_images_count_and_stay_finite_for_zero_and_one():
    # log: -log2(r) / log2(n); exp: 1 - 2^(-log2(n) (1 - r)) = 1 - n^-(1 - r); counts 0 and 1 read as 2.
    n = torch.tensor([[20], [256], [1], [0]])  # (4, 1)
    log = schedules.gamma("log", 0.25, n)  # 2 / log2(20) = 2 / 4.321928; 2 / 8; 2 / 1 and 2 / 1 clipped to 1
    assert log.shape == (4, 1)
    assert log.flatten().tolist() == pytest.approx([0.462756, 0.25, 1.0, 1.0], abs=1e-6)
    exp = schedules.gamma("exp", 0.5, n)  # 1 - 20^-0.5 = 1 - 0.223607; 1 - 1/16; 1 - 2^-0.5 for 1 and 0
    assert exp.flatten().tolist() == pytest.approx([0.776393, 0.9375, 0.292893, 0.292893], abs=1e-6)
    r = torch.linspace(0, 1, 11)
    for name in ("log", "exp"):
        assert torch.isfinite(schedules.gamma(name, r, n)).all()
        assert torch.equal(schedules.gamma(name, r, 256), schedules.gamma(name, r, torch.tensor(256)))


def _inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (b, N), generator=g)
    counts = torch.tensor([20, 7, 1][:b])
    return tokens, random_token_mask(counts, N, g), counts


def test_known_tokens_never_change_and_masks_are_filled():
    tokens, token_mask, _ = _inputs()
    out = sampling.decode(Probe(), tokens, token_mask, "cosine", 6, [1, 3, 6], generator=torch.Generator().manual_seed(0))
    assert sorted(out) == [1, 3, 6]
    for ids in out.values():
        assert torch.equal(ids[~token_mask], tokens[~token_mask])
        assert ids.max() < K and ids.min() >= 0


@pytest.mark.parametrize("schedule", ["linear", "cosine", "square"])
def test_masked_counts_follow_the_schedule_per_image(schedule):
    tokens, token_mask, counts = _inputs()
    probe, T = Probe(), 5
    sampling.decode(probe, tokens, token_mask, schedule, T, [T], generator=torch.Generator().manual_seed(1))
    assert probe.masked_seen[0] == counts.tolist()
    for t in range(1, T):
        g = schedules.gamma(schedule, t / T, N).item()
        for b, m in enumerate(counts.tolist()):
            still_before = probe.masked_seen[t - 1][b]
            expected = max(1, min(still_before - 1, math.floor(g * m))) if still_before > 0 else 0
            assert probe.masked_seen[t][b] == expected, (t, b)


# Counts masked after schedule steps 1, 2, 3 of T = 4 (ratios 1/4, 1/2, 3/4), N = 256, floor(gamma * M)
# with M = 20 and M = 200 masked at the start; the clip [1, still masked - 1] never binds here.
# log, M = 20:  log2 20 = 4.321928: 20 * 2/4.321928 = 9.26 -> 9, 20 * 1/4.321928 = 4.63 -> 4,
#               20 * 0.415037/4.321928 = 1.92 -> 1 (-log2 0.75 = 0.415037)
#      M = 200: log2 200 = 7.643856: 52.33 -> 52, 26.16 -> 26, 10.86 -> 10
#      (with N: 20 * 2/8 = 5, 20 * 1/8 = 2.5 -> 2; 200 * 0.25 = 50, 25, 10.38 -> 10)
# exp, M = 20:  20 * (1 - 20^-0.75) = 20 * 0.894263 = 17.89 -> 17, 20 * (1 - 20^-0.5) = 15.53 -> 15,
#               20 * (1 - 20^-0.25) = 20 * 0.527129 = 10.54 -> 10
#      M = 200: 200 * (1 - 0.018803) = 196.24 -> 196, 200 * (1 - 0.070711) = 185.86 -> 185,
#               200 * (1 - 0.265915) = 146.82 -> 146
#      (with N: 20 * (1 - 2^-6) = 19.69 -> 19, 20 * (1 - 1/16) = 18.75 -> 18, 20 * 3/4 = 15; 196, 187, 150)
# M = 1 keeps its one token masked to the last step, M = 0 has nothing to decode.
@pytest.mark.parametrize("schedule, seen", [
    ("log", [[20, 200, 1, 0], [9, 52, 1, 0], [4, 26, 1, 0], [1, 10, 1, 0]]),
    ("exp", [[20, 200, 1, 0], [17, 196, 1, 0], [15, 185, 1, 0], [10, 146, 1, 0]]),
])
def test_log_and_exp_count_from_the_tokens_masked_at_the_start(schedule, seen):
    n_tokens = 256
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([20, 200, 1, 0])
    tokens = torch.randint(0, K, (4, n_tokens), generator=g)
    probe = Probe(n_tokens=n_tokens)
    out = sampling.decode(probe, tokens, random_token_mask(counts, n_tokens, g), schedule, 4, [4],
                          generator=torch.Generator().manual_seed(0))
    assert probe.masked_seen == seen
    assert out[4].max() < K


# T = 12, start_step = 2 (MaskGIT's editing path): calls at schedule steps 3..12, the first with all M masked;
# after step s, floor(cos(pi/2 * s/12) * M) stay masked, clipped to [1, still masked - 1].
# M = 25: s=3: 25 * 0.923880 = 23.10 -> 23; s=4: 25 * 0.866025 = 21.65 -> 21; s=5: 25 * 0.793353 = 19.83 -> 19;
#   s=6: 25 * 0.707107 = 17.68 -> 17; s=7: 25 * 0.608761 = 15.22 -> 15; s=8: 25 * 0.5 = 12.5 -> 12;
#   s=9: 25 * 0.382683 = 9.57 -> 9; s=10: 25 * 0.258819 = 6.47 -> 6; s=11: 25 * 0.130526 = 3.26 -> 3.
# M = 7: 6.47 -> 6; 6.06 -> 6, clipped to 5; 5.55 -> 5, to 4; 4.95 -> 4, to 3; 4.26 -> 4, to 2; 3.5 -> 3, to 1;
#   then 1 for good.
def test_start_step_skips_the_first_schedule_steps_and_counts_from_the_start():
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([25, 7])
    tokens = torch.randint(0, K, (2, N), generator=g)
    token_mask = random_token_mask(counts, N, g)
    probe = Probe()
    out = sampling.decode(probe, tokens, token_mask, "cosine", 12, [3, 12], generator=torch.Generator().manual_seed(0),
                          start_step=2)
    assert sorted(out) == [3, 12]
    assert [seen[0] for seen in probe.masked_seen] == [25, 23, 21, 19, 17, 15, 12, 9, 6, 3]
    assert [seen[1] for seen in probe.masked_seen] == [7, 6, 5, 4, 3, 2, 1, 1, 1, 1]
    assert torch.equal(out[12][~token_mask], tokens[~token_mask]) and out[12].max() < K


def test_start_step_sweet_spots_are_schedule_steps_after_it():
    tokens, token_mask, _ = _inputs()
    probe = Probe()
    sampling.decode(probe, tokens, token_mask, "cosine", 12, [3], start_step=2)
    assert len(probe.masked_seen) == 1  # sweet spot 3 is the first pass
    with pytest.raises(ValueError, match="3..T=12"):
        sampling.decode(probe, tokens, token_mask, "cosine", 12, [2, 5], start_step=2)
    with pytest.raises(ValueError, match="start_step"):
        sampling.decode(probe, tokens, token_mask, "cosine", 4, [4], start_step=4)


def _first_draw(logits: torch.Tensor, token_temperature: float, seed: int) -> torch.Tensor:
    """The Gumbel-max draw decode's first pass makes: the generator's first (B, N, K) uniforms."""
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed)).clamp(1e-20, 1 - 1e-7)
    return (logits / token_temperature - torch.log(-torch.log(u))).argmax(-1)  # (B, N)


@pytest.mark.parametrize("token_temperature", [1.0, 0.5])
def test_the_token_draw_is_a_tempered_categorical_draw(token_temperature):
    tokens, token_mask, _ = _inputs()
    probe = Probe()
    out = sampling.decode(probe, tokens, token_mask, "cosine", 4, [1], generator=torch.Generator().manual_seed(5),
                          token_temperature=token_temperature)[1]
    expected = _first_draw(probe.inner(probe.inputs[0]).float(), token_temperature, seed=5)
    assert torch.equal(out[token_mask], expected[token_mask])  # bit for bit, 1.0 being the draw without the option


def test_a_cold_token_draw_is_the_argmax_and_keeps_the_untempered_confidence():
    tokens, token_mask, counts = _inputs()
    probe = Probe()
    # temperature 0: no choice noise, the confidence is the log-probability of the drawn token alone.
    out = sampling.decode(probe, tokens, token_mask, "linear", 2, [1, 2], temperature=0.0,
                          generator=torch.Generator().manual_seed(5), token_temperature=1e-6)
    logits = probe.inner(probe.inputs[0]).float()  # (B, N, K) of the first pass
    assert torch.equal(out[1][token_mask], logits.argmax(-1)[token_mask])
    # Linear, T = 2: floor(M / 2) stay masked: the lowest untempered log p of the argmax (tempered ones would all be 0).
    confidence = torch.where(token_mask, torch.log_softmax(logits, -1).amax(-1), torch.inf)  # (B, N)
    for b, m in enumerate(counts.tolist()):
        kept = max(1, min(m - 1, m // 2))
        assert torch.equal(probe.inputs[1][b] == K, confidence[b] < confidence[b].sort().values[kept])


def test_one_trajectory_serves_every_sweet_spot():
    tokens, token_mask, _ = _inputs()
    model = Probe()
    all_spots = sampling.decode(model, tokens, token_mask, "linear", 8, [2, 5, 8], generator=torch.Generator().manual_seed(7))
    for k in (2, 5, 8):
        alone = sampling.decode(model, tokens, token_mask, "linear", 8, [k], generator=torch.Generator().manual_seed(7))
        assert torch.equal(alone[k], all_spots[k])


def test_the_first_step_is_one_decode_whatever_the_schedule_and_T():
    # What lets the grid decode every k = 1 cell of a mask kind once (flows/eval_grid.py).
    tokens, token_mask, _ = _inputs()
    model = Probe()
    first = sampling.decode(model, tokens, token_mask, "linear", 1, [1], generator=torch.Generator().manual_seed(3))[1]
    for schedule, T in (("cosine", 8), ("square", 4), ("exp", 12)):
        out = sampling.decode(model, tokens, token_mask, schedule, T, [1, T], generator=torch.Generator().manual_seed(3))
        assert torch.equal(out[1], first)


def test_decoding_stops_at_the_last_sweet_spot():
    tokens, token_mask, _ = _inputs()
    model = Probe()
    out = sampling.decode(model, tokens, token_mask, "cosine", 8, [1, 3], generator=torch.Generator().manual_seed(0))
    assert sorted(out) == [1, 3] and len(model.masked_seen) == 3  # 3 transformer passes of the 8-step schedule


def test_batched_decoding_equals_one_image_at_a_time():
    tokens, token_mask, _ = _inputs()
    model = Probe(peaked=True)
    batched = sampling.decode(model, tokens, token_mask, "cosine", 4, [2, 4], temperature=0.0)
    for b in range(len(tokens)):
        single = sampling.decode(model, tokens[b:b + 1], token_mask[b:b + 1], "cosine", 4, [2, 4], temperature=0.0)
        for k in (2, 4):
            assert torch.equal(single[k][0], batched[k][b])


def test_sweet_spots_outside_the_trajectory_are_refused():
    tokens, token_mask, _ = _inputs()
    with pytest.raises(ValueError, match="1..T=4"):
        sampling.decode(Probe(), tokens, token_mask, "cosine", 4, [5])


def test_token_mask_marks_every_patch_touching_a_hole():
    pixel = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    pixel[0, 0, 5, 9] = True
    tm = masks.to_token_mask(pixel, 4).view(4, 4)
    assert tm.sum() == 1 and tm[1, 2]
    center = masks.make("center", 2, 64, seed=0)
    assert center.float().mean() == pytest.approx(0.25)
    assert masks.to_token_mask(center, 4).sum(1).tolist() == [64, 64]
