"""Dataset loaders on small fixtures written here in the real formats (COCO JSON with polygon and crowd-RLE
masks, ARO's JSON and image folder, ImageNet-Segmentation's MATLAB v7.3/HDF5 file, Pascal VOC palette PNGs):
what a loader yields matches what the fixture holds, and a missing file is named with where to get it."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nbhelpers.datasets import DatasetError, DatasetFileMissingError, aro, coco, segmentation, square

H, W = 48, 64


def flat_image(colour, h=H, w=W) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def rect(y0, y1, x0, x1, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major flattened mask, starting with a run of zeros."""
    flat = mask.T.ravel().astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


# -- COCO ---------------------------------------------------------------------------------------------------
def write_coco(root: Path, split="val2014") -> dict:
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    images = [{"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg", "height": H, "width": W} for i in (1, 2, 3)]
    for im, colour in zip(images, [(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.fromarray(flat_image(colour)).save(root / split / im["file_name"], quality=95)
    cats = [{"id": 18, "name": "dog", "supercategory": "animal"}, {"id": 17, "name": "cat", "supercategory": "animal"},
            {"id": 63, "name": "couch", "supercategory": "furniture"}, {"id": 3, "name": "car", "supercategory": "v"},
            {"id": 10, "name": "traffic light", "supercategory": "outdoor"}]
    crowd = rect(5, 30, 10, 40)
    inst = [  # dog: polygon (x, y pairs); couch: polygon; cat: crowd RLE; car and traffic light in image 3
        {"id": 1, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 1.0, "bbox": [8, 4, 20, 20],
         "segmentation": [[8, 4, 28, 4, 28, 24, 8, 24]]},
        {"id": 2, "image_id": 1, "category_id": 63, "iscrowd": 0, "area": 1.0, "bbox": [30, 20, 30, 25],
         "segmentation": [[30, 20, 60, 20, 60, 45, 30, 45]]},
        {"id": 3, "image_id": 2, "category_id": 17, "iscrowd": 1, "area": float(crowd.sum()), "bbox": [10, 5, 30, 25],
         "segmentation": uncompressed_rle(crowd)},
        {"id": 4, "image_id": 3, "category_id": 3, "iscrowd": 0, "area": 1.0, "bbox": [0, 0, 10, 10],
         "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
        {"id": 5, "image_id": 3, "category_id": 10, "iscrowd": 0, "area": 1.0, "bbox": [20, 0, 10, 10],
         "segmentation": [[20, 0, 30, 0, 30, 10, 20, 10]]}]
    caps = [{"id": 11, "image_id": 1, "caption": "A brown animal resting."},  # names nothing: the next one is used
            {"id": 12, "image_id": 1, "caption": "A dog sleeping on a couch"},
            {"id": 13, "image_id": 2, "caption": "Two cats in the sun."},
            {"id": 14, "image_id": 3, "caption": "A traffic light over the street."}]  # two-word names are not used
    info = {"description": "fixture", "version": "1.0", "year": 2014}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
        {"info": info, "images": images, "annotations": inst, "categories": cats}))
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(
        {"info": info, "images": images, "annotations": caps}))
    return {"crowd": crowd}


def test_coco_it_selects_captions_naming_a_category_with_its_instance_masks(tmp_path):
    fx = write_coco(tmp_path / "coco")
    items = coco.coco_it(tmp_path / "coco")
    assert [it.image_id for it in items] == [1, 2]
    dog, cat = items
    assert dog.caption == "A dog sleeping on a couch" and dog.words == ["dog", "couch"]
    assert dog.categories == ["dog", "couch"]
    assert cat.words == ["cats"] and cat.categories == ["cat"]
    np.testing.assert_array_equal(cat.masks[0], fx["crowd"])  # the crowd RLE decoded exactly
    for mask, expect in zip(dog.masks, (rect(4, 24, 8, 28), rect(20, 45, 30, 60))):  # polygons rasterised
        inter, union = (mask & expect).sum(), (mask | expect).sum()
        assert inter / union > 0.85, inter / union
    im = dog.image()
    assert im.shape == (H, W, 3) and np.abs(im.astype(int) - [200, 30, 30]).max() <= 3
    images, cases = coco.localisation_inputs(items, 32)
    assert images.shape == (2, 32, 32, 3) and [c.prompt for c in cases] == [dog.caption, cat.caption]
    assert [t.word for t in cases[0].targets] == ["dog", "couch"] and cases[0].targets[0].mask.shape == (32, 32)
    assert coco.coco_it(tmp_path / "coco", limit=1)[0].image_id == 1


def test_coco_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(DatasetFileMissingError, match="captions_val2014.json.*cocodataset.org"):
        (tmp_path / "c").mkdir()
        coco.coco_it(tmp_path / "c")
    write_coco(tmp_path / "d")
    with pytest.raises(DatasetFileMissingError, match="instances_val2017.json"):
        (tmp_path / "d" / "annotations" / "captions_val2017.json").write_text("{}")
        coco.coco_it(tmp_path / "d", split="val2017")
    (tmp_path / "d" / "annotations" / "instances_val2014.json").write_text('{"images": 3}')
    with pytest.raises(DatasetError, match="not a COCO annotation file"):
        coco.coco_it(tmp_path / "d")


# -- ARO ----------------------------------------------------------------------------------------------------
def write_aro(root: Path):
    (root / "images").mkdir(parents=True)
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:30, 5:45] = (250, 0, 0)  # the box's region
    Image.fromarray(img).save(root / "images" / "2315375.jpg", quality=95)
    Image.fromarray(flat_image((0, 0, 250))).save(root / "images" / "2340001.jpg", quality=95)
    box = {"bbox_x": 5, "bbox_y": 10, "bbox_w": 40, "bbox_h": 20}
    rel = [dict(box, image_path="2315375.jpg", true_caption="the horse is eating the grass",
                false_caption="the grass is eating the horse", relation_name="eating"),
           dict(box, image_path="2340001.jpg", true_caption="the cup is on the table",
                false_caption="the table is on the cup", relation_name="on")]
    att = [dict(box, image_path="2315375.jpg", true_caption="the red shirt and the white car",
                false_caption="the white shirt and the red car", attributes=["red", "white"])]
    (root / "visual_genome_relation.json").write_text(json.dumps(rel))
    (root / "visual_genome_attribution.json").write_text(json.dumps(att))


def test_aro_items_crop_to_their_box_and_pair_true_with_false(tmp_path):
    write_aro(tmp_path / "aro")
    rel = aro.load_aro(tmp_path / "aro", "relation")
    assert [(r.true, r.false, r.label) for r in rel] == [
        ("the horse is eating the grass", "the grass is eating the horse", "eating"),
        ("the cup is on the table", "the table is on the cup", "on")]
    crop = rel[0].image()
    assert crop.shape == (20, 40, 3) and np.abs(crop[2:-2, 2:-2].astype(int) - [250, 0, 0]).max() <= 8
    att = aro.load_aro(tmp_path / "aro", "attribution")
    assert len(att) == 1 and att[0].label == "red_white" and att[0].kind == "attribution"
    images, captions = aro.caption_inputs(rel, 32)
    assert images.shape == (2, 32, 32, 3)
    assert captions[0] == ("the horse is eating the grass", {"relation": "the grass is eating the horse"})
    with pytest.raises(DatasetError, match="kind='order'"):
        aro.load_aro(tmp_path / "aro", "order")
    (tmp_path / "aro" / "images" / "2340001.jpg").unlink()
    with pytest.raises(DatasetFileMissingError, match="2340001.jpg.*vgr_vga_images.zip"):
        aro.caption_inputs(rel, 32)
    (tmp_path / "aro" / "visual_genome_relation.json").write_text(json.dumps([{"image_path": "x.jpg"}]))
    with pytest.raises(DatasetError, match="item 0.*bbox_x"):
        aro.load_aro(tmp_path / "aro", "relation")
    with pytest.raises(DatasetFileMissingError, match="visual_genome_attribution.json"):
        aro.load_aro(tmp_path / "none", "attribution")


# -- ImageNet-Segmentation (MATLAB v7.3 = HDF5 with object references) ---------------------------------------
def write_gtsegs(path: Path, images, masks, ids):
    import h5py

    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        ref_t = h5py.special_dtype(ref=h5py.Reference)
        img_refs, gt_refs, id_refs = (f.create_dataset(f"/value/{n}", (len(images), 1), dtype=ref_t)
                                      for n in ("img", "gt", "id"))
        for k, (im, m, code) in enumerate(zip(images, masks, ids)):
            img_refs[k, 0] = refs.create_dataset(f"img{k}", data=im.transpose(2, 1, 0)).ref  # MATLAB's (3, W, H)
            inner = refs.create_dataset(f"gt{k}", (1, 1), dtype=ref_t)
            inner[0, 0] = refs.create_dataset(f"gtdata{k}", data=m.astype(np.uint8).transpose(1, 0)).ref
            gt_refs[k, 0] = inner.ref
            id_refs[k, 0] = refs.create_dataset(f"id{k}", data=np.array([[ord(c)] for c in code], np.uint16)).ref


def test_imagenet_segmentation_reads_images_masks_and_synsets(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (H, W, 3), dtype=np.uint8), rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)]
    masks = [rect(5, 20, 10, 50), rect(0, 10, 0, 20, 30, 20)]
    write_gtsegs(tmp_path / "gtsegs_ijcv.mat", images, masks, ["n02085620_1205", "n01440764_77"])
    items = segmentation.load_imagenet_segmentation(tmp_path / "gtsegs_ijcv.mat", names={"n02085620": "dog"})
    assert [(it.label, it.word) for it in items] == [("n02085620", "dog"), ("n01440764", None)]
    for it, im, m in zip(items, images, masks):
        np.testing.assert_array_equal(it.image(), im)
        np.testing.assert_array_equal(it.mask, m)
    ims, ms, words = segmentation.segmentation_inputs(items, 16)
    assert ims.shape == (2, 16, 16, 3) and ms.shape == (2, 16, 16) and ms.dtype == bool and words == ["dog", None]
    with pytest.raises(DatasetFileMissingError, match="gtsegs_ijcv.mat"):
        segmentation.load_imagenet_segmentation(tmp_path / "none.mat")
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DatasetError, match="not an HDF5"):
        segmentation.load_imagenet_segmentation(tmp_path / "bad.mat")


# -- Pascal VOC ---------------------------------------------------------------------------------------------
def write_voc(root: Path):
    for d in ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass"):
        (root / d).mkdir(parents=True)
    labels = {"2007_000032": np.zeros((H, W), np.uint8), "2007_000033": np.zeros((H, W), np.uint8)}
    labels["2007_000032"][5:20, 5:30] = 8  # cat
    labels["2007_000032"][25:40, 30:60] = 12  # dog
    labels["2007_000033"][10:40, 10:50] = 15  # person
    for lab in labels.values():
        lab[lab > 0] = np.where(np.roll(lab, 1, 0)[lab > 0] == 0, 255, lab[lab > 0])  # a void border, as VOC has
    palette = sum(([i, 255 - i, (7 * i) % 256] for i in range(256)), [])
    for i, lab in labels.items():
        Image.fromarray(flat_image((90, 90, 90))).save(root / "JPEGImages" / f"{i}.jpg")
        p = Image.fromarray(lab, mode="P")
        p.putpalette(palette)
        p.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(labels) + "\n")
    return labels


def test_voc_masks_per_class_and_the_single_class_split(tmp_path):
    labels = write_voc(tmp_path / "VOC2012")
    items = segmentation.load_voc(tmp_path / "VOC2012")
    assert [(it.key, it.word) for it in items] == [("2007_000032", "cat"), ("2007_000032", "dog"),
                                                   ("2007_000033", "person")]
    np.testing.assert_array_equal(items[1].mask, labels["2007_000032"] == 12)
    assert not (items[1].mask & (labels["2007_000032"] == 255)).any()  # void pixels are in no mask
    assert items[0].image().shape == (H, W, 3)
    single = segmentation.load_voc(tmp_path / "VOC2012", single_class=True)
    assert [(it.key, it.word) for it in single] == [("2007_000033", "person")]
    (tmp_path / "VOC2012" / "SegmentationClass" / "2007_000033.png").unlink()
    with pytest.raises(DatasetFileMissingError, match="2007_000033.png.*VOCtrainval"):
        segmentation.load_voc(tmp_path / "VOC2012")


def test_square_crops_images_and_masks_alike():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255
    mask = np.zeros((40, 80), bool)
    mask[:, 20:60] = True
    out, m = square(img, 20, mask)
    assert out.shape == (20, 20, 3) and m.shape == (20, 20) and m.all() and (out > 250).all()
    with pytest.raises(ValueError, match="size=0"):
        square(img, 0)
