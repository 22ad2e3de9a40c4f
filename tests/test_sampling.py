import math

import pytest
import torch
import torch.nn as nn

from maskgit_inpaint import masks, sampling, schedules
from maskgit_inpaint.models.transformer import MaskedTokenTransformer, TransformerConfig
from maskgit_inpaint.training.masking import random_token_mask

K, N = 16, 36


class Probe(nn.Module):
    """A real (tiny, random) transformer that records how many [MASK] ids each call saw per image."""

    def __init__(self, peaked: bool = False):
        super().__init__()
        self.inner = MaskedTokenTransformer(TransformerConfig(codebook_size=K, n_tokens=N, n_layer=1, n_head=1, n_embd=16))
        self.config = self.inner.config
        self.peaked = peaked
        self.masked_seen: list[list[int]] = []

    def forward(self, ids):
        self.masked_seen.append((ids == K).sum(1).tolist())
        logits = self.inner(ids)
        # Peaked logits make every draw deterministic: then batching must not change anything.
        return logits * 1000 if self.peaked else logits


@pytest.mark.parametrize("name", sorted(schedules.SCHEDULES))
def test_schedules_decrease_from_one_to_zero(name):
    r = torch.linspace(0, 1, 101)
    g = schedules.gamma(name, r, 256)
    assert g[0] >= 1 - 1 / 256 and g[-1] == pytest.approx(1e-6, abs=1e-5)  # exp starts at 1 - 1/N, as in MaskGIT
    assert torch.all(g[1:] <= g[:-1] + 1e-12)


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
