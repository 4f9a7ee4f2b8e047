"""Merge methods on small tensors against straightforward element-by-element references
written from the papers' definitions (TIES: Yadav et al. 2023; DARE: Yu et al. 2024)."""

import math

import pytest
import torch

from merge.methods import (
    METHODS,
    PARAMS,
    check_weights,
    coefficients,
    is_linear,
    dare_linear,
    dare_ties,
    linear,
    magnitude_prune,
    merge_deltas,
    task_arithmetic,
    ties,
    weaverec,
)


def small_deltas(n=3, shape=(5, 7), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


def trim(values, density):
    """Keep the int(density * n) entries of largest |value| (a flat list), zero the rest."""
    k = int(density * len(values))
    order = sorted(range(len(values)), key=lambda j: -abs(values[j]))[:k]
    return [values[j] if j in order else 0.0 for j in range(len(values))]


def sign(x):
    return (x > 0) - (x < 0)


def elect_and_merge(columns, weights):
    """Per entry: gamma = sgn(sum_i w_i t_i) (0 counts as +), mean over i with sgn(t_i) = gamma."""
    out = []
    for entries in zip(*columns):
        gamma = 1 if sum(w * t for w, t in zip(weights, entries)) >= 0 else -1
        agree = [(w, t) for w, t in zip(weights, entries) if sign(t) == gamma]
        out.append(sum(w * t for w, t in agree) / sum(w for w, _ in agree) if agree else 0.0)
    return out


def reference_ties(deltas, weights, density, scale=1.0):
    trimmed = [trim(d.flatten().tolist(), density) for d in deltas]
    return torch.tensor([scale * v for v in elect_and_merge(trimmed, weights)]).view(deltas[0].shape)


def reference_dare(deltas, drop_rate, seed):
    """Each entry dropped when its uniform draw is below p; survivors divided by 1 - p."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for d in deltas:
        u = torch.rand(d.shape, generator=gen).flatten().tolist()
        out.append([0.0 if ui < drop_rate else v / (1 - drop_rate) for ui, v in zip(u, d.flatten().tolist())])
    return out


def close(a, b):
    assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6), (a - b).abs().max()


@pytest.mark.parametrize("density,weights", [(0.4, [1.0, 1.0, 1.0]), (0.7, [0.5, 2.0, 1.0]), (1.0, [1, 1, 3])])
def test_ties_matches_the_paper(density, weights):
    deltas = small_deltas()
    got = ties(deltas, torch.tensor(weights), density=density, scale=0.8)
    close(got, reference_ties(deltas, weights, density, scale=0.8))


def test_ties_equal_weights_is_the_disjoint_mean():
    a, b = torch.tensor([[3.0, -1.0, 2.0]]), torch.tensor([[1.0, -4.0, -1.0]])
    # column 0: both +, mean 2; column 1: both -, mean -2.5; column 2: sum +1 -> +, only a agrees: 2
    close(ties([a, b], torch.ones(2), density=1.0), torch.tensor([[2.0, -2.5, 2.0]]))


def test_dare_linear_and_dare_ties_match_the_paper():
    deltas, weights, p, seed = small_deltas(), [1.0, 0.5, 2.0], 0.3, 11
    dropped = reference_dare(deltas, p, seed)
    linear_ref = [1.5 * sum(w * d[j] for w, d in zip(weights, dropped)) for j in range(35)]
    close(dare_linear(deltas, torch.tensor(weights), drop_rate=p, seed=seed, scale=1.5),
          torch.tensor(linear_ref).view(5, 7))
    close(dare_ties(deltas, torch.tensor(weights), drop_rate=p, seed=seed),
          torch.tensor(elect_and_merge(dropped, weights)).view(5, 7))


def test_dare_is_reproducible_under_a_seed_and_drops_about_p():
    deltas = small_deltas(n=2, shape=(200, 50))
    one = dare_linear(deltas, torch.ones(2), drop_rate=0.6, seed=3)
    assert torch.equal(one, dare_linear(deltas, torch.ones(2), drop_rate=0.6, seed=3))
    assert not torch.equal(one, dare_linear(deltas, torch.ones(2), drop_rate=0.6, seed=4))
    single = dare_linear(deltas[:1], torch.ones(1), drop_rate=0.6, seed=3)
    assert abs((single == 0).float().mean().item() - 0.6) < 0.02
    kept = single != 0
    close(single[kept], deltas[0][kept] / 0.4)


def test_magnitude_prune_keeps_the_largest_entries():
    deltas, weights = small_deltas(), [1.0, -0.5, 2.0]
    trimmed = [trim(d.flatten().tolist(), 0.5) for d in deltas]
    expected = [sum(w * t[j] for w, t in zip(weights, trimmed)) for j in range(35)]
    close(magnitude_prune(deltas, torch.tensor(weights), density=0.5), torch.tensor(expected).view(5, 7))


def test_linear_methods_and_their_coefficients_agree():
    deltas, w = small_deltas(), torch.tensor([1.0, 2.0, -0.5])
    lam = [math.exp(x / 2) for x in w.tolist()]
    lam = [x / sum(lam) for x in lam]
    close(weaverec(deltas, w, temperature=2.0), sum(l * d for l, d in zip(lam, deltas)))
    sig = [1 / (1 + math.exp(-x)) for x in w.tolist()]
    close(weaverec(deltas, w, normalize="sigmoid"), sum(s * d for s, d in zip(sig, deltas)))
    close(linear(deltas, w), sum(x * d for x, d in zip(w.tolist(), deltas)) / 2.5)
    close(task_arithmetic(deltas, w, scale=0.3), 0.3 * sum(x * d for x, d in zip(w.tolist(), deltas)))
    for method, params in (("weaverec", {"temperature": 2.0}), ("linear", {}), ("task_arithmetic", {"scale": 0.3})):
        c = coefficients(method, w, **params)
        close(merge_deltas(method, deltas, w, **params), sum(ci * d for ci, d in zip(c.tolist(), deltas)))


def test_every_method_is_one_record_and_refuses_what_it_does_not_declare():
    deltas, w = small_deltas(), torch.tensor([1.0, 2.0, 0.5])
    for name, record in METHODS.items():
        assert set(record.params) <= set(PARAMS), name
        assert record.paper, name
        assert torch.isfinite(merge_deltas(name, deltas, w)).all()  # the declared defaults suffice
        assert is_linear(name) == (record.coefficients is not None)
    with pytest.raises(ValueError, match="weaverec does not take density"):
        merge_deltas("weaverec", deltas, w, density=0.5)
    with pytest.raises(ValueError, match="drop_rate must be in"):
        merge_deltas("dare_ties", deltas, w, drop_rate=1.0)
    with pytest.raises(ValueError, match="positive"):
        check_weights("ties", torch.tensor([1.0, -1.0]))
