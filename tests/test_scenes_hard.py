"""The hard scene preset (clrp.scenes.hard), its world variants and the scenes-hard:N dataset spec."""
from __future__ import annotations

import math

import numpy as np
import pytest

from clrp.scenes import hard as H
from clrp.scenes import presets
from clrp.scenes.hard_paint import CONTEXT_EDGES, CONTEXT_WIDTH, paint
from clrp.errors import ClrpError

SEEDS = list(range(30_000_000, 30_000_000 + 40))


@pytest.fixture(scope="module")
def some_scenes():
    return [H.generate_scene(s) for s in SEEDS]


def test_deterministic_and_layout_agrees():
    for s in (0, 7, 12_345_678):
        a, b = H.generate_scene(s), H.generate_scene(s)
        assert a.image.shape == (H.SCENE_SIZE, H.SCENE_SIZE, 3) and a.image.dtype == np.uint8
        assert a.image.tobytes() == b.image.tobytes()
        assert [(o.class_name, o.box, o.depth) for o in a.objects] == [(o.class_name, o.box, o.depth) for o in b.objects]
        assert all((o.mask == p.mask).all() for o, p in zip(a.objects, b.objects))
        lay = H.generate_layout(s)
        assert [(o.class_index, o.box) for o in lay] == [(o.class_index, o.box) for o in a.objects]
        assert all((o.mask == p.mask).all() and (o.full_mask == p.full_mask).all() for o, p in zip(lay, a.objects))
        assert H.scene_classes(s) == sorted(o.class_index for o in a.objects)
    assert H.generate_scene(1).image.tobytes() != H.generate_scene(2).image.tobytes()
    assert H.generate_scene(5).name == "hard_00000005"


def test_boxes_masks_and_occlusion_agree(some_scenes):
    n_occluded = n_small = n_obj = 0
    for sc in some_scenes:
        objs = sc.objects
        assert 2 <= len(objs) <= 5
        assert len({o.class_index for o in objs}) == len(objs)          # distinct classes
        assert sorted(o.depth for o in objs) == list(range(len(objs)))
        owner = np.zeros(sc.image.shape[:2], dtype=int)
        for o in objs:
            owner += o.mask
        assert owner.max() <= 1                                           # visible masks never overlap
        for o in objs:
            ys, xs = np.nonzero(o.mask)
            assert o.box == (xs.min(), ys.min(), xs.max(), ys.max())     # box = tight box of the visible mask
            assert not (o.mask & ~o.full_mask).any()                     # visible part lies on the shape
            hidden = o.full_mask & ~o.mask
            assert (hidden == o.hidden).all()
            above = np.zeros_like(o.mask)
            below = np.zeros_like(o.mask)
            for p in objs:
                if p.depth > o.depth:
                    above |= p.mask
                elif p.depth < o.depth:
                    below |= p.mask
            # a hidden part is in no mask but an occluder's: under the objects painted above it
            assert not (hidden & ~above).any()
            assert not (hidden & below).any()
            assert o.visible_fraction >= H.MIN_VISIBLE_FRACTION and o.mask.sum() >= H.MIN_VISIBLE_PIXELS
            n_occluded += bool(hidden.any())
            n_small += o.box_area < H.SMALL_AREA
            n_obj += 1
        if len(objs) >= 2:
            # the topmost object is never hidden
            top = max(objs, key=lambda o: o.depth)
            assert (top.mask == top.full_mask).all()
    assert n_small >= n_obj / 3                                          # at least a third small
    assert n_occluded >= n_obj / 10                                      # occlusion is common, not rare


def test_objects_are_painted_where_their_masks_are(some_scenes):
    # the visible pixels of an object differ from the scene without it: its mask is where it is drawn
    sc = some_scenes[0]
    objs, vis = H._layout(sc.seed, H.SCENE_SIZE)
    img_without, *_ = paint(H._rng(sc.seed, 2), H._rng(sc.seed, 3), objs, [v * 0 for v in vis], H.SCENE_SIZE, H.PRESET)
    for o in sc.objects:
        diff = np.abs(sc.image.astype(int) - img_without.astype(int)).sum(-1)
        assert np.median(diff[o.mask]) > 20


def test_co_occurrence_matches_class_statistics():
    st = H.class_statistics()
    pn = st["n_objects"]
    assert math.isclose(sum(pn.values()), 1.0, abs_tol=1e-9)
    for n, p in zip((2, 3, 4, 5), H.OBJECT_COUNT_P):
        assert math.isclose(pn[n], p, abs_tol=1e-9)
    assert math.isclose(st["class"].sum(), sum(n * p for n, p in pn.items()), abs_tol=1e-9)
    assert np.allclose(np.diag(st["pair"]), st["class"])
    ci = H.CLASS_NAMES.index
    for a, b in H.EXCLUSIVE:
        assert st["pair"][ci(a), ci(b)] == 0.0
    # partners co-occur far more often than unrelated pairs
    cond = st["pair"] / st["class"][:, None]          # P(b | a)
    for a, b in H.PARTNERS:
        assert cond[ci(a), ci(b)] > 0.75
    assert cond[ci("circle"), ci("heart")] < 0.45

    N = 2000
    sets = [H.scene_classes(s) for s in range(20_000_000, 20_000_000 + N)]   # the generator's own sampler
    counts = np.zeros(H.NUM_CLASSES)
    pairs = np.zeros((H.NUM_CLASSES, H.NUM_CLASSES))
    sizes = {}
    for cs in sets:
        counts[cs] += 1
        pairs[np.ix_(cs, cs)] += 1
        sizes[len(cs)] = sizes.get(len(cs), 0) + 1

    def close(k, p):   # binomial count within 4.5 standard deviations (and at least 3 counts)
        return abs(k - N * p) <= max(4.5 * math.sqrt(N * p * (1 - p)), 3)

    for c in range(H.NUM_CLASSES):
        assert close(counts[c], st["class"][c]), (H.CLASS_NAMES[c], counts[c] / N, st["class"][c])
    for a in range(H.NUM_CLASSES):
        for b in range(a + 1, H.NUM_CLASSES):
            assert close(pairs[a, b], st["pair"][a, b]), (H.CLASS_NAMES[a], H.CLASS_NAMES[b])
    for n, p in pn.items():
        assert close(sizes.get(n, 0), p)
    for a, b in H.EXCLUSIVE:
        assert pairs[ci(a), ci(b)] == 0


def test_sample_classes_is_the_scene_code_path():
    # the class set of full scenes equals the sampler's, for a few seeds
    for s in range(100, 110):
        assert [o.class_index for o in H.generate_layout(s)] and \
            sorted(o.class_index for o in H.generate_layout(s)) == H.scene_classes(s)


def test_scene_specs():
    sp = presets.parse_spec("scenes-hard:12")
    assert (sp.preset, sp.n, sp.seed) == ("scenes-hard", 12, presets.DEFAULT_SEED)
    assert presets.parse_spec("scenes:3:7") == presets.SceneSpec("scenes", 3, 7)
    assert presets.is_spec("scenes-hard:5") and presets.is_spec("scenes:5")
    assert not presets.is_spec("/data/voc") and not presets.is_spec("scenes-hard")
    for bad in ("scenes-hard:x", "scenes-hard:0", "scenes-hard:3:4:5", "scenes-hard:3:-1", "scenes-easy:3"):
        with pytest.raises(ClrpError):
            presets.parse_spec(bad)
    assert presets.scene_from_id("hard_00000003").image.shape[0] == H.SCENE_SIZE
    assert presets.scene_from_id("scene_00000003").image.shape[0] == 128


def test_cli_parser_accepts_scenes_hard():
    from clrp import cli

    sp = cli._parse_scenes("scenes-hard:4:100")
    assert (sp.preset, sp.n, sp.seed) == ("scenes-hard", 4, 100)
    assert cli._is_scenes_spec("scenes-hard:4")
    with pytest.raises(ClrpError, match="--dataset"):
        cli._parse_scenes("scenes-hard:nope")


def test_voc_export_round_trip(tmp_path):
    from clrp.datasets import open_dataset

    root = presets.dataset_dir("scenes-hard:3:40000000", tmp_path)
    assert root.endswith("scenes-hard-3-40000000")
    assert presets.dataset_dir("scenes-hard:3:40000000", tmp_path) == root   # cached
    ds = open_dataset(root, "voc", split="test")
    samples = list(ds.samples())
    assert [s.image_id for s in samples] == [f"hard_{40000000 + i:08d}" for i in range(3)]
    for s in samples:
        sc = H.generate_scene(int(s.image_id.split("_")[1]))
        assert (s.width, s.height) == (H.SCENE_SIZE, H.SCENE_SIZE)
        assert sorted(o.class_name for o in s.objects) == sorted(o.class_name for o in sc.objects)
        for o in sc.objects:
            gt = s.gt_mask(o.class_name)
            assert (gt == o.mask).all()      # the exported mask is the visible part


def test_world_variants_are_values_passed_in():
    """hard.VARIANTS: a variant changes the world of the calls it is passed to (the exact statistics
    too); the preset, its statistics and the module constants never change; shipped is the preset."""
    ci = H.CLASS_NAMES.index
    before = H.class_statistics()["pair"].copy()
    seeds = range(20_000_000, 20_000_040)
    shipped = [H.scene_classes(s) for s in seeds]
    st = H.class_statistics(H.world_variant("partners"))
    cond = st["pair"] / st["class"][:, None]
    # a partner is added whenever the scene has room (it has none when its class is drawn last)
    assert all(0.84 < cond[ci(a), ci(b)] < 0.85 and before[ci(a), ci(b)] / before[ci(a), ci(a)] < 0.81
               for a, b in H.PARTNERS)
    assert all(len(H.scene_classes(s, H.VARIANTS["crowded"])) == 5 for s in seeds)
    objs = [o for s in range(40) for o in H.generate_layout(s, world=H.VARIANTS["small"])]
    assert all((o.box[2] - o.box[0] + 1) * (o.box[3] - o.box[1] + 1) < H.SMALL_AREA for o in objs)
    assert H.VARIANTS["apart"].occlude_p == 0.0 and H.VARIANTS["apart"].changes() == {"OCCLUDE_P": 0.0}
    assert H.OCCLUDE_P == 0.5 and H.PARTNER_P == 0.9 and H.PRESET.occlude_p == 0.5
    assert np.array_equal(H.class_statistics()["pair"], before)
    assert [H.scene_classes(s) for s in seeds] == shipped
    assert H.VARIANTS["shipped"] == H.PRESET and H.PRESET.changes() == {}
    assert [H.scene_classes(s, H.VARIANTS["shipped"]) for s in seeds] == shipped
    with pytest.raises(ValueError, match="known: shipped"):
        H.world_variant("nope")
    with pytest.raises(Exception):   # a value: nobody changes the preset in place
        H.PRESET.occlude_p = 0.0


def test_world_variants_generate_concurrently():
    """Several worlds generated at once in threads give the scenes each gives alone (the former
    module-global switch could not)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(s, name) for s in (30_000_000, 30_000_001) for name in ("shipped", "crowded", "small", "context")]

    def digest(job):
        sc = H.generate_scene(job[0], world=H.VARIANTS[job[1]])
        return sc.image.tobytes(), [(o.class_index, o.box) for o in sc.objects], sc.contexts

    alone = [digest(j) for j in jobs]
    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(digest, jobs)) == alone
    assert len({a[0] for a in alone}) == len(jobs)


def test_context_variant_bands_follow_their_rates_and_leave_the_layout_alone():
    """The context variant: each present class has its band with probability CONTEXT_P, one absent
    class's band appears in a CONTEXT_FALSE_P share of the scenes; objects, masks and classes are
    those of the preset's scene of the same seed; the preset itself draws no band."""
    seeds = range(20_000_000, 20_000_300)
    assert all(H.generate_scene(s).contexts == () for s in seeds[:5])
    ctx = H.VARIANTS["context"]
    p, q = ctx.context_p, ctx.context_false_p
    present = drawn = false = 0
    for s in seeds:
        sc = H.generate_scene(s, world=ctx)
        names = {o.class_name for o in sc.objects}
        bands = [c for c, *_ in sc.contexts]
        assert all(edge in CONTEXT_EDGES and CONTEXT_WIDTH[0] <= w <= CONTEXT_WIDTH[1]
                   for _, edge, w, *_ in sc.contexts)
        masks = H.context_masks(sc)
        assert set(masks) == set(bands)
        for c, edge, w, *_ in sc.contexts:   # a band lies along its edge, at most width + 8 px deep
            ys, xs = np.nonzero(masks[c])
            depth = {"top": ys, "bottom": 223 - ys, "left": xs, "right": 223 - xs}[edge]
            assert depth.min() == 0 and depth.max() <= w + 8
        present += len(names)
        drawn += sum(c in names for c in bands)
        extra = [c for c in bands if c not in names]
        assert len(extra) <= 1
        false += len(extra)
        if s < seeds[0] + 5:
            lay = H.generate_layout(s, world=ctx)
            plain = H.generate_scene(s)
            assert [(o.class_index, o.box) for o in lay] == [(o.class_index, o.box) for o in plain.objects]
            assert all((o.mask == m.mask).all() for o, m in zip(plain.objects, sc.objects))
            assert plain.contexts == () and plain.image.tobytes() != sc.image.tobytes()
    n = len(seeds)
    assert abs(drawn - present * p) <= 4.5 * (present * p * (1 - p)) ** 0.5
    assert abs(false - n * q) <= 4.5 * (n * q * (1 - q)) ** 0.5
    assert H.PRESET.context_p == 0.0 and H.PRESET.context_false_p == 0.0


def test_render_arrays_draws_the_world_it_is_given():
    """The training scripts' scene arrays come from the variant passed in (train_hard_model --variant)."""
    class Identity:
        @staticmethod
        def display_array(img):
            return img

    x, y = presets.render_arrays("scenes-hard", 3, 30_000_000, Identity(), chunk=2, world=H.VARIANTS["crowded"])
    assert x.shape == (3, H.SCENE_SIZE, H.SCENE_SIZE, 3) and (y.sum(1) == 5).all()
    assert x[0].tobytes() == H.generate_scene(30_000_000, world=H.VARIANTS["crowded"]).image.tobytes()
    shipped = presets.render_arrays("scenes-hard", 3, 30_000_000, Identity())[1]
    assert (shipped.sum(1) < 5).any()
    with pytest.raises(ClrpError, match="no world variants"):
        presets.render_arrays("scenes", 1, 0, Identity(), world=H.VARIANTS["crowded"])
