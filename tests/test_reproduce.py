"""``nbhelpers reproduce``: the shipped configs load and name their published numbers; configs run end to end
on fixtures in the real formats (COCO, ARO) made of the toy world's pictures, with the toy model and tiny
sample counts; the ConceptAttention table stops clearly for a model without joint attention."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nbhelpers import reproduce
from nbhelpers.datasets import coco

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "reproduce"
TINY = ["--model", "toy", "--device", "cpu"]


def rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major runs, starting with zeros)."""
    flat = mask.T.ravel().astype(np.uint8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"counts": [int(c) for c in counts], "size": list(mask.shape)}


def write_world_coco(root: Path, n: int = 4):
    """COCO files whose images are world renders, categories the shape nouns, masks the exact object masks."""
    from nbhelpers.toyworld.scenes import world_pairs

    scenes, images, masks = world_pairs(n, seed=11)
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    nouns = sorted({o.noun for s in scenes for o in s.objects})
    cats = [{"id": i + 1, "name": w, "supercategory": "shape"} for i, w in enumerate(nouns)]
    imgs, anns, caps = [], [], []
    for k, (s, im, ms) in enumerate(zip(scenes, images, masks)):
        name = f"COCO_val2014_{k + 1:012d}.png"
        Image.fromarray(im).save(root / "val2014" / name)
        imgs.append({"id": k + 1, "file_name": name, "height": im.shape[0], "width": im.shape[1]})
        caps.append({"id": 100 + k, "image_id": k + 1, "caption": s.caption()})
        for o, m in zip(s.objects, ms):
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": nouns.index(o.noun) + 1,
                         "iscrowd": 1, "area": float(m.sum()), "bbox": [0, 0, 1, 1], "segmentation": rle(m)})
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(
        {"images": imgs, "annotations": anns, "categories": cats}))
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": imgs, "annotations": caps}))


def test_shipped_configs_name_model_data_and_published_numbers():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert names == set(reproduce.TABLES)
    for p in CONFIGS.glob("*.yaml"):
        cfg = reproduce.load_config(p)
        assert cfg["model"] and cfg["data"]["kind"] and cfg["published"], p
    loc = reproduce.load_config(CONFIGS / "infodecomp_localisation.yaml")
    assert loc["published"]["whole image"] == {"value": 14.9} and loc["published"]["cmi"]["low"] == 32.3
    aro = reproduce.load_config(CONFIGS / "infodecomp_aro.yaml")
    assert aro["published"]["VG-Relation"] == {"value": 69.1}
    assert set(reproduce.load_config(CONFIGS / "pid_occupation_audit.yaml")["published"].values()) == {"not stated"}


def test_bad_configs_are_refused_with_the_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntable: infodecomp_localisation\nmodel: toy\ndata: {kind: coco_it, root: .}\n"
                   "published: {cmi: 33}\nsteps: 3\n")
    with pytest.raises(reproduce.ReproduceError, match=r"unknown key\(s\) \['steps'\]"):
        reproduce.load_config(bad)
    bad.write_text("name: x\ntable: infodecomp_localisation\nmodel: toy\ndata: {kind: coco_it, root: .}\n"
                   "published: {cmi: about a third}\n")
    reproduce.load_config(bad)  # a note is allowed ("not stated")
    bad.write_text("name: x\ntable: infodecomp_localisation\nmodel: toy\ndata: {kind: coco_it, root: .}\n"
                   "published: {cmi: {low: 3}}\n")
    with pytest.raises(reproduce.ReproduceError, match="never a guess"):
        reproduce.load_config(bad)
    with pytest.raises(reproduce.ReproduceError, match="shipped ones"):
        reproduce.load_config(tmp_path / "none.yaml")
    with pytest.raises(reproduce.ReproduceError, match="KEY.SUB=VALUE"):
        reproduce.override({}, "samples.n")
    assert reproduce.main([str(CONFIGS / "infodecomp_localisation.yaml"), *TINY, "--data-root",
                           str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2  # missing data: exit 2


def test_localisation_table_end_to_end_on_a_coco_fixture(tmp_path, capsys):
    write_world_coco(tmp_path / "coco")
    out = tmp_path / "out"
    rc = reproduce.main([str(CONFIGS / "infodecomp_localisation.yaml"), *TINY, "--data-root", str(tmp_path / "coco"),
                         "--out", str(out), "--set", "samples.n=4", "--set", "samples.attention_n=2",
                         "--set", "samples.batch_size=8"])
    assert rc == 0, capsys.readouterr().err
    table = pd.read_csv(out / "table.csv", keep_default_na=False)
    assert "mIoU % (cmi)" in capsys.readouterr().out
    rows = table.set_index(["metric", "protocol"])
    assert rows.loc[("mIoU % (whole image)", "published"), "published"] == "14.9"
    assert rows.loc[("mIoU % (cmi)", "published"), "published"] == "32.3–33.6"
    assert rows.loc[("mIoU % (cmi)", "held-out"), "published"] == "—"
    assert rows.loc[("mIoU % (cmi smoothed)", "published"), "published"] == "not stated"
    # a known answer: the whole image's IoU with a mask is the mask's share of the image, at every threshold
    _, cases = coco.localisation_inputs(coco.coco_it(tmp_path / "coco"), 32)
    shares = [t.mask.mean() for c in cases for t in c.targets]
    assert rows.loc[("mIoU % (whole image)", "published"), "ours"] == pytest.approx(100 * np.mean(shares), abs=1e-9)
    assert rows.loc[("mIoU % (whole image)", "published"), "n"] == len(shares)
    num = table[table.ours.astype(str) != ""]
    assert ((num.ci_low <= num.ci_high) | num.ci_low.isna()).all()
    assert (out / "localisation" / "records.jsonl").exists() and json.loads((out / "table.json").read_text())["rows"]


def test_aro_and_pid_tables_end_to_end(tmp_path, capsys):
    from nbhelpers.toyworld.scenes import caption_swaps, world_pairs

    scenes, images, _ = world_pairs(2, seed=3)
    root = tmp_path / "aro"
    (root / "images").mkdir(parents=True)
    items = []
    for k, (im, (true, swaps)) in enumerate(zip(images, caption_swaps(scenes))):
        Image.fromarray(im).save(root / "images" / f"{k}.jpg", quality=95)
        false = next(iter(swaps.values()))
        items.append({"image_path": f"{k}.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 32, "bbox_h": 32,
                      "true_caption": true, "false_caption": false, "relation_name": "left of"})
    (root / "visual_genome_relation.json").write_text(json.dumps(items))
    rc = reproduce.main([str(CONFIGS / "infodecomp_aro.yaml"), *TINY, "--data-root", str(root), "--out",
                         str(tmp_path / "o1"), "--set", "data.sets=[relation]", "--set", "samples.n=4"])
    assert rc == 0, capsys.readouterr().err
    row = pd.read_csv(tmp_path / "o1" / "table.csv").iloc[0]
    assert row.metric == "accuracy % (VG-Relation)" and row.n == 2 and row.published == 69.1
    assert row.ours in (0, 50, 100) and row.ci_low <= row.ours <= row.ci_high
    rc = reproduce.main([str(CONFIGS / "pid_occupation_audit.yaml"), *TINY, "--out", str(tmp_path / "o2"),
                         "--set", "data.subjects=[circle, square]", "--set", "data.group_words=[red]",
                         "--set", "samples.n_pid=2", "--set", "samples.pid_samples=4", "--set", "samples.steps=2",
                         "--set", "samples.guidance=3"])
    assert rc == 0, capsys.readouterr().err
    t = pd.read_csv(tmp_path / "o2" / "table.csv")
    assert len(t) == 2 and sorted(t.ours) == [0.0, 1.0] and set(t.published) == {"not stated"}
    assert len(pd.read_csv(tmp_path / "o2" / "audit" / "pid.csv")) == 4


def test_conceptattention_needs_joint_attention(toy_model, tmp_path):
    cfg = reproduce.load_config(CONFIGS / "conceptattention_segmentation.yaml")
    with pytest.raises(reproduce.ReproduceError, match="joint attention.*cross-attention"):
        reproduce.run(dict(cfg, out=str(tmp_path)), model=toy_model)


def test_conceptattention_table_runs_on_a_tiny_flux_and_a_voc_fixture(tmp_path, capsys):
    """The plumbing on a tiny random Flux pipeline (its numbers mean nothing): one row per metric, in range."""
    from nbhelpers.toyworld.tiny import save_tiny_pipeline
    from test_datasets import write_voc

    folder = save_tiny_pipeline(tmp_path / "flux", family="flux-schnell")
    write_voc(tmp_path / "VOC2012")
    rc = reproduce.main([str(CONFIGS / "conceptattention_segmentation.yaml"), "--model", str(folder), "--device",
                         "cpu", "--data-root", str(tmp_path / "VOC2012"), "--out", str(tmp_path / "o"),
                         "--set", "data.kind=voc", "--set", "data.single_class=false", "--set", "samples.n=2"])
    assert rc == 0, capsys.readouterr().err
    t = pd.read_csv(tmp_path / "o" / "table.csv")
    assert list(t.metric) == ["pixel accuracy %", "mIoU %", "mAP %"] and (t.n == 3).all()
    assert t.ours.between(0, 100).all() and set(t.published) == {"not stated"}


def test_prompt_intervention_table_end_to_end(tmp_path, capsys):
    write_world_coco(tmp_path / "coco")
    rc = reproduce.main([str(CONFIGS / "prompt_intervention.yaml"), *TINY, "--data-root", str(tmp_path / "coco"),
                         "--out", str(tmp_path / "o"), "--set", "samples.n=4", "--set", "samples.steps=3"])
    assert rc == 0, capsys.readouterr().err
    t = pd.read_csv(tmp_path / "o" / "table.csv").set_index("metric")
    assert list(t.published) == [0.27, 0.34] and (t.n == 4).all()
    assert t.ours.between(-1, 1).all() and (t.ci_low <= t.ci_high).all()
