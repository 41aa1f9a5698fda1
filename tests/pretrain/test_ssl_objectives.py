"""Self-distillation and contrastive losses: hand values, invariances, centring, Sinkhorn, KoLeo, schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panderm.pretrain.methods.multiview import teacher_temperature
from panderm.pretrain.objectives import (
    PretrainError,
    center_update,
    centered_softmax,
    dino_loss,
    entropy,
    info_nce_loss,
    koleo_loss,
    masked_patch_distillation_loss,
    sinkhorn_knopp,
)


def test_dino_loss_is_the_teacher_entropy_when_student_and_teacher_agree():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g)
    temp = 0.1
    targets = F.softmax(logits / temp, dim=-1)
    # every student view predicts exactly the teacher's distribution
    loss = dino_loss([logits, logits, logits], [targets, targets], temp)
    torch.testing.assert_close(loss, entropy(targets))
    # and the loss is minimal there: any other student scores more (Gibbs' inequality)
    other = dino_loss([logits, logits, logits + torch.randn(5, 7, generator=g)], [targets, targets], temp)
    assert other > loss


def test_dino_loss_by_hand_skips_same_view_pairs():
    s = [torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])]
    t = [torch.tensor([[0.25, 0.75]]), torch.tensor([[0.9, 0.1]])]
    temp = 0.5
    expected = []
    for i in range(2):
        for j in range(3):
            if i != j:
                logp = np.log(np.exp(s[j].numpy()[0] / temp) / np.exp(s[j].numpy()[0] / temp).sum())
                expected.append(-(t[i].numpy()[0] * logp).sum())
    assert dino_loss(s, t, temp).item() == pytest.approx(np.mean(expected), rel=1e-6)
    with pytest.raises(PretrainError, match="at least two views"):
        dino_loss([s[0]], [t[0]], temp)


def test_centered_softmax_and_center_update():
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 0.0, 3.0]])
    center = torch.tensor([0.5, -0.5, 1.0])
    expected = F.softmax((logits - center) / 0.04, dim=-1)
    torch.testing.assert_close(centered_softmax(logits, center, 0.04), expected)
    new = center_update(center, logits, momentum=0.9)
    torch.testing.assert_close(new, 0.9 * center + 0.1 * logits.mean(0))
    # (V, B, K) logits: the mean runs over every leading position
    torch.testing.assert_close(center_update(center, logits[None].repeat(2, 1, 1), 0.9), new)
    # centring is invariant to a constant shift of every logit
    torch.testing.assert_close(centered_softmax(logits + 5.0, center, 0.04), expected)


def test_sinkhorn_balances_prototypes_and_normalises_samples():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 5, generator=g)
    q = sinkhorn_knopp(logits, temperature=0.5, iterations=100)
    torch.testing.assert_close(q.sum(1), torch.ones(12))
    torch.testing.assert_close(q.sum(0), torch.full((5,), 12 / 5), rtol=1e-3, atol=1e-3)
    # one iteration already makes rows exact; columns approximately balanced
    q1 = sinkhorn_knopp(logits, temperature=0.1, iterations=1)
    torch.testing.assert_close(q1.sum(1), torch.ones(12))
    # a constant shift of the logits changes nothing
    torch.testing.assert_close(sinkhorn_knopp(logits + 100, 0.1, 3), sinkhorn_knopp(logits, 0.1, 3))


def test_info_nce_by_brute_force_and_symmetric():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    tau = 0.2
    z = F.normalize(torch.cat([z1, z2]), dim=-1).numpy().astype(np.float64)
    sims = z @ z.T / tau
    losses = []
    for i in range(8):
        partner = (i + 4) % 8
        others = [j for j in range(8) if j != i]
        losses.append(-(sims[i, partner] - np.log(np.exp(sims[i, others]).sum())))
    assert info_nce_loss(z1, z2, tau).item() == pytest.approx(np.mean(losses), rel=1e-5)
    torch.testing.assert_close(info_nce_loss(z1, z2, tau), info_nce_loss(z2, z1, tau))
    # invariant to the embeddings' scale; lowest when the views agree and differ from the rest
    torch.testing.assert_close(info_nce_loss(3 * z1, z2, tau), info_nce_loss(z1, z2, tau))
    assert info_nce_loss(z1, z1, tau) < info_nce_loss(z1, z2, tau)


def test_koleo_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    xn = F.normalize(x, dim=-1).numpy()
    d = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert koleo_loss(x).item() == pytest.approx(-np.log(d.min(1) + 1e-8).mean(), rel=1e-5)
    with pytest.raises(PretrainError, match="at least 2"):
        koleo_loss(x[:1])


def test_masked_patch_distillation_only_reads_masked_positions():
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 4, 5, generator=g), F.softmax(torch.randn(2, 4, 5, generator=g), -1)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    temp = 0.1
    ce = -(teacher * F.log_softmax(student / temp, -1)).sum(-1)
    expected = ((ce[0, 0] + ce[0, 2]) / 2 + ce[1, 3]) / 2
    loss = masked_patch_distillation_loss(student, teacher, mask, temp)
    torch.testing.assert_close(loss, expected)
    changed = student.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 5, generator=g)
    torch.testing.assert_close(masked_patch_distillation_loss(changed, teacher, mask, temp), loss)
    # an image without masked patches does not count
    mask[1] = False
    torch.testing.assert_close(
        masked_patch_distillation_loss(student, teacher, mask, temp), (ce[0, 0] + ce[0, 2]) / 2
    )


def test_entropy_of_uniform_and_one_hot():
    assert entropy(torch.full((3, 8), 1 / 8)).item() == pytest.approx(math.log(8))
    assert entropy(torch.eye(4)).item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_temperature_warms_up_linearly_then_stays():
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(90, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0, None, 0.04, 0.07, 0.3) == 0.07
