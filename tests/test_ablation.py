"""Feature ablation at a hidden layer, against the engine contract (clrp.engine.forward(ablate=))."""
import pytest
import torch

engine = pytest.importorskip("clrp.engine")
if not hasattr(engine, "forward"):
    pytest.skip("engine.forward not available yet", allow_module_level=True)

from clrp.evaluation.ablation import ablation_summary, feature_ablation  # noqa: E402


def _model():
    # constant input 1 -> channels after the ReLU are 1, 2, 3 everywhere -> pooled [1, 2, 3]
    conv = torch.nn.Conv2d(1, 3, 1, bias=False)
    lin = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1))
        lin.weight.copy_(torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))  # logits [2, 2, 3]
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), lin).eval()


def _by(rows, ranking, k):
    return [r for r in rows if r["ranking"] == ranking and r["k"] == k]


@pytest.mark.parametrize("layer", ["1", "3"])  # [N, K, H, W] output (4-D mask) and [N, K] output
def test_topk_drops_by_hand(layer):
    m = _model()
    x = torch.ones(2, 1, 4, 4)
    rel = torch.tensor([[0.1, 5.0, 1.0], [0.1, 5.0, 1.0]])   # ranking: channel 1, 2, 0
    rows = feature_ablation(m, x, 0, layer, relevances=rel, ks=(1, 2, 3, 7), ranking_name="hand",
                            random_repeats=3, seed=0)
    (r1, _) = _by(rows, "hand", 1)
    # zero ch1 -> logits [2, 0, 3]: target drop 0, others mean 2.5 -> 1.5
    assert r1["target_drop"] == pytest.approx(0.0) and r1["others_drop"] == pytest.approx(1.0)
    assert r1["gap"] == pytest.approx(-1.0) and r1["target_logit"] == 2 and r1["others_mean"] == 2.5
    (r2, _) = _by(rows, "hand", 2)
    assert r2["target_drop"] == pytest.approx(0.0) and r2["others_drop"] == pytest.approx(2.5)
    (r3, _) = _by(rows, "hand", 3)  # k=7 is capped at 3 channels and merged with k=3
    assert r3["target_drop"] == pytest.approx(2.0) and r3["others_drop"] == pytest.approx(2.5)
    # random ablation of all channels is the same as ablating everything
    (q3, _) = _by(rows, "random", 3)
    assert q3["target_drop"] == pytest.approx(2.0) and q3["target_drop_std"] == pytest.approx(0.0)
    assert sorted({r["k"] for r in rows}) == [1, 2, 3]
    again = feature_ablation(m, x, 0, layer, relevances=rel, ks=(1, 2, 3), ranking_name="hand",
                             random_repeats=3, seed=0)
    assert [r["target_drop"] for r in again] == [r["target_drop"] for r in rows]
    s = ablation_summary(rows)
    assert s.loc[("hand", 1), "others_drop"] == pytest.approx(1.0) and s.loc[("hand", 1), "n"] == 2


def test_random_is_seeded_mean_of_draws():
    m = _model()
    x = torch.ones(1, 1, 4, 4)
    rows = feature_ablation(m, x, [0], "1", relevances=torch.tensor([[3.0, 2.0, 1.0]]), ks=(1,),
                            random_repeats=30, seed=1)
    (r,) = _by(rows, "random", 1)
    # each draw zeroes one channel: ch0 -> drop 2, ch1/ch2 -> 0; the mean lies strictly between
    assert 0.0 < r["target_drop"] < 2.0 and r["repeats"] == 30
    (h,) = _by(rows, "clrp2", 1)
    assert h["target_drop"] == pytest.approx(2.0) and h["others_drop"] == pytest.approx(0.0)


def test_ranking_from_layer_relevance():
    import clrp

    if not hasattr(clrp, "layer_relevance"):
        pytest.skip("clrp.layer_relevance not available yet")
    m = _model()
    x = torch.ones(1, 1, 4, 4)
    # only channel 0 feeds logit 0 -> LRP puts it first; zeroing it removes the whole target logit
    # and leaves the other logits unchanged
    rows = feature_ablation(m, x, 0, "1", method="lrp", ks=(1,), random_repeats=2,
                            box=(0.0, 1.0))
    (r,) = _by(rows, "lrp", 1)
    assert r["target_drop"] == pytest.approx(2.0) and r["others_drop"] == pytest.approx(0.0)


def test_bad_inputs():
    m = _model()
    x = torch.ones(2, 1, 4, 4)
    with pytest.raises(ValueError):
        feature_ablation(m, x, [0, 1, 2], "1", relevances=torch.ones(2, 3))
    with pytest.raises(ValueError):
        feature_ablation(m, x, 0, "1", relevances=torch.ones(3, 3))
