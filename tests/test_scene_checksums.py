"""Scene SHA-1s are those of the code before clrp/scenes/ became a package (a committed table,
the output of ``python scripts/assets/scene_checksums.py`` at commit 54b53da, a subset), and the former
module names still work for one release."""
from __future__ import annotations

import runpy
import subprocess
import sys

import pytest
from .script_modules import load_script

from clrp.scenes import easy, export, hard, presets

# lines of scripts/assets/scene_checksums.py's output (same format): a few scenes of each preset and variant
# and two small VOC exports
TABLE = """
scenes seed=0 image 4f063fad270e97d34b70bdfdc42381fbc8495897 (128, 128, 3)
scenes seed=0 boxes 28f6c69e00c09d0e1807ac181dea9b06adf9485d
scenes seed=0 masks acc1d4c0d3048f0585d62adda73aa36d7eb05ade
scenes seed=20000006 image bce759bb5390ab878f3e5fd9f756e047395b2d50 (128, 128, 3)
scenes seed=20000006 boxes f0ee8617b83479d9d30f874da3de0b6ac76a89cc
scenes seed=20000006 masks b92bc605671782962590e1c35d0ed410078d9c5c
scenes-hard variant=shipped class_statistics 657eb8271dc91e723a761dcc3d6469457833fc29
scenes-hard variant=shipped seed=1 image 8a004407ce3c6633afb7aa07cd2cf2af6350334c (224, 224, 3)
scenes-hard variant=shipped seed=1 boxes 1bfbf01da4e8c023082d5278a2934e35742c09c0
scenes-hard variant=shipped seed=1 masks d62c0e71cb207233f89694f1a8b903c6dec95bb4
scenes-hard variant=shipped seed=1 full_masks d62c0e71cb207233f89694f1a8b903c6dec95bb4
scenes-hard variant=shipped seed=1 depth 5b9ab7367cd5e7619dd134d94e68f572fc497aa7
scenes-hard variant=shipped seed=1 extras da9c63f167a90ccf5c21880df0a610d000ae6083
scenes-hard variant=shipped seed=30000000 image 71797f7557d3a80d7a9bdc973105d62550425091 (224, 224, 3)
scenes-hard variant=shipped seed=30000000 boxes debfcebeb35bf8f6419985f107890e8635c3c08c
scenes-hard variant=shipped seed=30000000 masks e054bb4b101714579e6f721e471892170b3ed925
scenes-hard variant=shipped seed=30000000 full_masks e054bb4b101714579e6f721e471892170b3ed925
scenes-hard variant=shipped seed=30000000 depth 349908fc67ebbe92b56cfb0c3fdbd18286e77709
scenes-hard variant=shipped seed=30000000 extras 4c5a8b3887a1d9ff91da54418fd10e61ad03385b
scenes-hard variant=apart class_statistics 657eb8271dc91e723a761dcc3d6469457833fc29
scenes-hard variant=apart seed=1 image 617be3576c63bdb8e67998b300798de215defa07 (224, 224, 3)
scenes-hard variant=apart seed=1 boxes 306e29f081d1f4de2616efbc14579df2ace5e049
scenes-hard variant=apart seed=1 masks 25e15ee96edea34c17465aad48d5b3892cfd5dd6
scenes-hard variant=apart seed=1 full_masks 3bd062064f5a154553c6420c1c93f3392038ebef
scenes-hard variant=apart seed=1 depth 5b9ab7367cd5e7619dd134d94e68f572fc497aa7
scenes-hard variant=apart seed=1 extras da9c63f167a90ccf5c21880df0a610d000ae6083
scenes-hard variant=apart seed=30000000 image 710c50fec5357041992a89f64ed23ee9a5c125ea (224, 224, 3)
scenes-hard variant=apart seed=30000000 boxes 907d17f84fc6f7cec6aa87aa51100234dbfa8cc4
scenes-hard variant=apart seed=30000000 masks 7c2176f1a623e6170ef6da94b1e239a7d800e6cc
scenes-hard variant=apart seed=30000000 full_masks 7c2176f1a623e6170ef6da94b1e239a7d800e6cc
scenes-hard variant=apart seed=30000000 depth 349908fc67ebbe92b56cfb0c3fdbd18286e77709
scenes-hard variant=apart seed=30000000 extras 4c5a8b3887a1d9ff91da54418fd10e61ad03385b
scenes-hard variant=crowded class_statistics 38508a8b550095197862497c9d90efaad3c6ca72
scenes-hard variant=crowded seed=1 image 2d77938b1aa286efa81d74cedeb9444bd4603a6e (224, 224, 3)
scenes-hard variant=crowded seed=1 boxes 0b3eaff61257032431bc2bafa466205b8c56317d
scenes-hard variant=crowded seed=1 masks 3d900d4c63b94f24fdb36680f7e820a11ab9b055
scenes-hard variant=crowded seed=1 full_masks 135153f727c6dec82544bc50fff22d6dd050f052
scenes-hard variant=crowded seed=1 depth 3791acb834e6f8bd624794bb490c1c81226dc4b6
scenes-hard variant=crowded seed=1 extras da9c63f167a90ccf5c21880df0a610d000ae6083
scenes-hard variant=crowded seed=30000000 image d10623905813a29eff27b1063d111780ace806f0 (224, 224, 3)
scenes-hard variant=crowded seed=30000000 boxes 308c569f955f859996fdb3d818d7b61ac5af2998
scenes-hard variant=crowded seed=30000000 masks e2a24e202f934dcfc6a8a53c875ce0e4c84d93f6
scenes-hard variant=crowded seed=30000000 full_masks e2a24e202f934dcfc6a8a53c875ce0e4c84d93f6
scenes-hard variant=crowded seed=30000000 depth 269ffdc8f1a8dca15b690cb1e968295677ebbc9f
scenes-hard variant=crowded seed=30000000 extras 4c5a8b3887a1d9ff91da54418fd10e61ad03385b
scenes-hard variant=partners class_statistics 8185e00fee68ab6a84eeb4dcd4af22eb85d8da87
scenes-hard variant=partners seed=1 image 8a004407ce3c6633afb7aa07cd2cf2af6350334c (224, 224, 3)
scenes-hard variant=partners seed=1 boxes 1bfbf01da4e8c023082d5278a2934e35742c09c0
scenes-hard variant=partners seed=1 masks d62c0e71cb207233f89694f1a8b903c6dec95bb4
scenes-hard variant=partners seed=1 full_masks d62c0e71cb207233f89694f1a8b903c6dec95bb4
scenes-hard variant=partners seed=1 depth 5b9ab7367cd5e7619dd134d94e68f572fc497aa7
scenes-hard variant=partners seed=1 extras da9c63f167a90ccf5c21880df0a610d000ae6083
scenes-hard variant=partners seed=30000000 image 71797f7557d3a80d7a9bdc973105d62550425091 (224, 224, 3)
scenes-hard variant=partners seed=30000000 boxes debfcebeb35bf8f6419985f107890e8635c3c08c
scenes-hard variant=partners seed=30000000 masks e054bb4b101714579e6f721e471892170b3ed925
scenes-hard variant=partners seed=30000000 full_masks e054bb4b101714579e6f721e471892170b3ed925
scenes-hard variant=partners seed=30000000 depth 349908fc67ebbe92b56cfb0c3fdbd18286e77709
scenes-hard variant=partners seed=30000000 extras 4c5a8b3887a1d9ff91da54418fd10e61ad03385b
scenes-hard variant=small class_statistics 657eb8271dc91e723a761dcc3d6469457833fc29
scenes-hard variant=small seed=1 image d3999c3a3ca382debd0ee46c939398d7d724db7e (224, 224, 3)
scenes-hard variant=small seed=1 boxes 13dbcaaf3ff1194c59dc28f67971815b6c055a63
scenes-hard variant=small seed=1 masks d12471d4ef18937df16919bbf08572f9fc048d9b
scenes-hard variant=small seed=1 full_masks d12471d4ef18937df16919bbf08572f9fc048d9b
scenes-hard variant=small seed=1 depth 349908fc67ebbe92b56cfb0c3fdbd18286e77709
scenes-hard variant=small seed=1 extras 3a97f22e653e9b8fb6ada2d4270e610288dd86c4
scenes-hard variant=small seed=30000000 image 3881103f675f2b4cf59d02e4901ad91d76079ad3 (224, 224, 3)
scenes-hard variant=small seed=30000000 boxes debfcebeb35bf8f6419985f107890e8635c3c08c
scenes-hard variant=small seed=30000000 masks e054bb4b101714579e6f721e471892170b3ed925
scenes-hard variant=small seed=30000000 full_masks e054bb4b101714579e6f721e471892170b3ed925
scenes-hard variant=small seed=30000000 depth 349908fc67ebbe92b56cfb0c3fdbd18286e77709
scenes-hard variant=small seed=30000000 extras 2234ccc53246f7b5f18ca88a1493a9e546f10f45
scenes-hard variant=context class_statistics 657eb8271dc91e723a761dcc3d6469457833fc29
scenes-hard variant=context seed=1 image 8b6ad9db0d6f1ce9d24089e48781a414b73f836e (224, 224, 3)
scenes-hard variant=context seed=1 boxes 1bfbf01da4e8c023082d5278a2934e35742c09c0
scenes-hard variant=context seed=1 masks d62c0e71cb207233f89694f1a8b903c6dec95bb4
scenes-hard variant=context seed=1 full_masks d62c0e71cb207233f89694f1a8b903c6dec95bb4
scenes-hard variant=context seed=1 depth 5b9ab7367cd5e7619dd134d94e68f572fc497aa7
scenes-hard variant=context seed=1 extras 78364d0267f78383495034742bb27f247ade9013
scenes-hard variant=context seed=30000000 image 39f3c9685c475a8c256c9c3b83d3b5b6cde27e24 (224, 224, 3)
scenes-hard variant=context seed=30000000 boxes debfcebeb35bf8f6419985f107890e8635c3c08c
scenes-hard variant=context seed=30000000 masks e054bb4b101714579e6f721e471892170b3ed925
scenes-hard variant=context seed=30000000 full_masks e054bb4b101714579e6f721e471892170b3ed925
scenes-hard variant=context seed=30000000 depth 349908fc67ebbe92b56cfb0c3fdbd18286e77709
scenes-hard variant=context seed=30000000 extras 07ee6e54f70bb3b6aeda5005672be3d802deac65
export_voc scenes labels.txt 533b38d967c95b1bb22927bc53080c3f804b6f6f
export_voc scenes Annotations/scene_00000003.xml e98b1a5a6cfb84391b8755fb3004a8b0718006a4
export_voc scenes Annotations/scene_00000004.xml 61b38b51722e4c05476d471d1e8c7427eda5555e
export_voc scenes ImageSets/Main/val.txt bd0f2c4fa73e2f4ae40903563f52006ebc28179e
export_voc scenes JPEGImages/scene_00000003.jpg 7d8243d4acc38cb303171c09837ae688a670941d
export_voc scenes JPEGImages/scene_00000004.jpg 24031d6bba560795c34b11c731c27f5fc0fcdd41
export_voc scenes Masks/scene_00000003_0.png 84a7b1f522128d8cba4367eda1b28d7ac77b72b7
export_voc scenes Masks/scene_00000004_0.png 8b2017c271fbdbe8f331d99e1a47d07d0e163f86
export_voc scenes Masks/scene_00000004_1.png e2f86365bec0f733ca64ab78de45b852b1ec00a3
cli export clrp.scenes_hard labels.txt 533b38d967c95b1bb22927bc53080c3f804b6f6f
cli export clrp.scenes_hard Annotations/hard_00000012.xml 532e5ca31a8c933b19e1c8abcad9bc18eb35fa02
cli export clrp.scenes_hard Annotations/hard_00000013.xml 2742ef356d700f67dffec18f4adbe521e22401f8
cli export clrp.scenes_hard ImageSets/Main/train.txt 6b63b360a6323842838ea1c94668c20ec6163d57
cli export clrp.scenes_hard JPEGImages/hard_00000012.jpg b7b716c32da0ad3eb497d665f34857a6db5cfc16
cli export clrp.scenes_hard JPEGImages/hard_00000013.jpg c6f3cb69b7e86bd4dfd8446e2a5f98582c8fbaa7
cli export clrp.scenes_hard Masks/hard_00000012_0.png c1f38a87cc49eee8345eb6a08141d653e3ba68b4
cli export clrp.scenes_hard Masks/hard_00000012_1.png 3221cb9a43f0263df7f64b782127e1f18ea26030
cli export clrp.scenes_hard Masks/hard_00000012_2.png fffff4edc6a3973df34ba6ead2914415769410b6
cli export clrp.scenes_hard Masks/hard_00000012_3.png 72b9cd9e1f59020195832d8c2a4619ddc43e3dc6
cli export clrp.scenes_hard Masks/hard_00000013_0.png 3e0d7afe4fb90e02e203c20d432b1a86fa0f72cd
cli export clrp.scenes_hard Masks/hard_00000013_1.png 06f853cecf9d6b4055ce6b205b57a9f46882b4eb
"""


_script = load_script("scene_checksums")  # the line formats the table above was made with
_sha1, _scene_lines, _folder_lines = _script.sha1, _script.scene_lines, _script.folder_lines


def _expected(prefix: str) -> list[str]:
    return [line for line in TABLE.strip().splitlines() if line.startswith(prefix)]


def test_easy_scenes_are_unchanged():
    got = [line for s in (0, presets.SAMPLE_SEED) for line in _scene_lines(f"scenes seed={s}", easy.generate_scene(s))]
    assert got == _expected("scenes seed=")


@pytest.mark.parametrize("name", list(hard.VARIANTS))
def test_hard_scenes_of_every_variant_are_unchanged(name):
    world = hard.VARIANTS[name]
    st = hard.class_statistics(world)
    got = [f"scenes-hard variant={name} class_statistics "
           f"{_sha1(st['class'].tobytes() + st['pair'].tobytes() + repr(sorted(st['n_objects'].items())).encode())}"]
    for s in (1, 30_000_000):
        got += _scene_lines(f"scenes-hard variant={name} seed={s}", hard.generate_scene(s, world=world))
    assert got == _expected(f"scenes-hard variant={name} ")


def test_voc_exports_are_unchanged(tmp_path, capsys):
    export.export_voc(easy.iter_scenes(2, 3), tmp_path / "easy", "val")
    assert _folder_lines("export_voc scenes", tmp_path / "easy") == _expected("export_voc scenes ")
    from clrp.cli import main

    dest = tmp_path / "hard"
    assert main(["scenes", "export", str(dest), "-n", "2", "--seed", "12", "--split", "train",
                 "--preset", "scenes-hard"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert _folder_lines("cli export clrp.scenes_hard", dest) == _expected("cli export clrp.scenes_hard ")


def test_scenes_export_refuses_a_variant_of_the_easy_world(tmp_path, capsys):
    from clrp.cli import main

    assert main(["scenes", "export", str(tmp_path / "x"), "-n", "1", "--variant", "small"]) == 2
    assert "no world variants" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# the former module names, kept for one release


def test_former_clrp_scenes_names_are_importable():
    import clrp.scenes as old

    for name in ("CLASS_NAMES", "NUM_CLASSES", "SCENE_SIZE", "MAX_ROTATION", "MIN_OBJECT_SIZE", "MAX_OBJECT_SIZE",
                 "OBJECT_COUNT_P", "SceneObject", "Scene", "generate_scene", "generate_dataset", "iter_scenes",
                 "scene_labels", "export_voc", "scene_to_voc_xml", "EVALUATION_SEED", "SAMPLE_SEED", "voc_cache",
                 "export_main"):
        assert hasattr(old, name), name
    assert old.generate_scene is easy.generate_scene and old.voc_cache is presets.voc_cache
    assert old.EVALUATION_SEED == presets.DEFAULT_SEED == 30_000_000


def test_former_scenes_hard_variant_switches_only_its_own_functions():
    from clrp import scenes_hard

    seeds = range(20_000_000, 20_000_020)
    shipped = [scenes_hard.scene_classes(s) for s in seeds]
    assert scenes_hard.VARIANTS["apart"] == {"OCCLUDE_P": 0.0} and scenes_hard.VARIANTS["shipped"] == {}
    with pytest.raises(RuntimeError):
        with scenes_hard.variant("crowded") as changes:
            assert changes == {"OBJECT_COUNT_P": (0.0, 0.0, 0.0, 1.0)}
            assert all(len(scenes_hard.scene_classes(s)) == 5 for s in seeds)
            assert scenes_hard.generate_scene(1).image.tobytes() == \
                hard.generate_scene(1, world=hard.VARIANTS["crowded"]).image.tobytes()
            assert [hard.scene_classes(s) for s in seeds] == shipped      # the new module: unaffected
            raise RuntimeError("inside")
    assert [scenes_hard.scene_classes(s) for s in seeds] == shipped
    with pytest.raises(ValueError, match="known: shipped"):
        with scenes_hard.variant("nope"):
            pass


def test_former_scene_presets_names():
    from clrp import scene_presets

    assert scene_presets.PRESETS["scenes-hard"][0] == "clrp.scenes_hard"   # (generator, description), as before
    assert scene_presets.PRESETS["scenes"][1] == presets.PRESETS["scenes"].description
    assert scene_presets.PRESET_MODEL == {"scenes": "bundled", "scenes-hard": "bundled-hard"}
    assert scene_presets.generate_scene("hard_00000001").name == "hard_00000001"
    assert scene_presets.parse_spec("scenes:2") == presets.SceneSpec("scenes", 2, 30_000_000)


def test_former_entry_point_forwards_to_the_cli(tmp_path, monkeypatch, capsys):
    dest = tmp_path / "voc"
    monkeypatch.setattr(sys, "argv", ["clrp.scenes", str(dest), "-n", "2", "--seed", "3", "--split", "val"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("clrp.scenes", run_name="__main__")
    assert e.value.code == 0
    assert "python -m clrp scenes export" in capsys.readouterr().err
    assert _folder_lines("export_voc scenes", dest) == _expected("export_voc scenes ")


@pytest.mark.slow
def test_former_hard_entry_point_forwards_to_the_cli(tmp_path):
    dest = tmp_path / "voc"
    r = subprocess.run([sys.executable, "-m", "clrp.scenes_hard", str(dest), "-n", "2", "--seed", "12",
                        "--split", "train"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "--preset scenes-hard" in r.stderr
    assert _folder_lines("cli export clrp.scenes_hard", dest) == _expected("cli export clrp.scenes_hard ")
