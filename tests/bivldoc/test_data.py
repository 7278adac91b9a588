import shutil

import numpy as np
import pytest

from pretrainkit.errors import DataError
from pretrainkit.systems.bivldoc.data import (
    BIO_TAGS,
    Page,
    check_no_funsd_test,
    load_funsd,
    load_funsd_page,
    load_image,
    load_sroie,
    pretrain_pages,
)


def test_funsd_splits_words_and_labels(shared_data):
    train, test = load_funsd(shared_data, "train"), load_funsd(shared_data, "test")
    assert (len(train), len(test)) == (149, 50)
    assert not {p.page_id for p in train} & {p.page_id for p in test}
    for p in train[:10] + test[:10]:
        assert len(p.labels) == len(p.words) and set(p.labels) <= set(BIO_TAGS)
        assert p.boxes.min() >= 0 and p.boxes.max() <= 1000
        # every entity (segment) starts with B- or is all O; I- never starts a segment
        starts = np.r_[True, p.seg_ids[1:] != p.seg_ids[:-1]]
        assert all(not p.labels[i].startswith("I-") for i in np.nonzero(starts)[0])
        # each segment box holds its words' boxes
        sb = p.seg_boxes[p.seg_ids]
        assert (sb[:, :2] <= p.boxes[:, :2]).all() and (sb[:, 2:] >= p.boxes[:, 2:]).all()
    # header/question/answer entities of the training split, as the FUNSD paper counts them (441/3266/2802),
    # less the few entities whose words are all empty text
    b = {t: sum(lab == f"B-{t}" for p in train for lab in p.labels) for t in ("HEADER", "QUESTION", "ANSWER")}
    assert 430 <= b["HEADER"] <= 441 and 3200 <= b["QUESTION"] <= 3266 and 2700 <= b["ANSWER"] <= 2802


def test_sroie_receipts(shared_data):
    pages = load_sroie(shared_data, limit=5)
    assert len(pages) == 5
    for p in pages:
        assert p.fields and set(p.fields) == {"company", "date", "address", "total"}
        assert p.boxes.max() <= 1000 and len(p.seg_boxes) == p.seg_ids.max() + 1


def test_pretraining_never_sees_funsd_test(shared_data, tmp_path):
    pages = pretrain_pages(shared_data, synthetic=2, funsd_limit=3, sroie_limit=2)
    assert {p.source for p in pages} == {"funsd-train", "sroie", "synthetic"}
    assert all(p.labels is None for p in pages)  # unlabelled corpus
    # the SROIE test receipts (080-099) are never pre-training pages either
    receipts = {p.page_id for p in pretrain_pages(shared_data, funsd_limit=1) if p.source == "sroie"}
    assert len(receipts) == 80 and not receipts & {p.page_id for p in load_sroie(shared_data, split="test")}
    test = load_funsd(shared_data, "test", limit=1)[0]
    with pytest.raises(DataError, match="FUNSD test page"):
        check_no_funsd_test(pages + [test], shared_data)
    # the same scan under another name (e.g. a user's folder) is caught by its content
    copy = tmp_path / "my_scan.png"
    shutil.copy(test.image_path, copy)
    disguised = Page(
        page_id="my_scan",
        source="ocr",
        words=["x"],
        boxes=np.zeros((1, 4), np.int64),
        seg_ids=np.zeros(1, np.int64),
        seg_boxes=np.zeros((1, 4), np.int64),
        size=(10, 10),
        image_path=copy,
    )
    with pytest.raises(DataError, match="is FUNSD test page"):
        check_no_funsd_test(pages + [disguised], shared_data)


def test_truncated_and_unreadable_images(shared_data, tmp_path):
    src = load_funsd(shared_data, "train", limit=1)[0].image_path
    cut = tmp_path / "cut.png"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.png"):
        load_image(cut)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.png"):
        load_image(junk)


def _funsd_ann(tmp_path, shared_data, form):
    import json

    img = load_funsd(shared_data, "train", limit=1)[0].image_path
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"form": form}))
    return ann, img


def test_bad_annotations(shared_data, tmp_path):
    ent = {"id": 0, "text": "a", "label": "question", "linking": [], "box": [1, 1, 5, 5]}
    ann, img = _funsd_ann(
        tmp_path, shared_data, [{**ent, "words": [{"text": "a", "box": [10, 10, 5000, 20]}]}]
    )
    with pytest.raises(DataError, match="outside"):
        load_funsd_page(ann, img, "funsd-train")
    ann, img = _funsd_ann(tmp_path, shared_data, [{**ent, "words": []}])
    with pytest.raises(DataError, match="word list is empty"):
        load_funsd_page(ann, img, "funsd-train")
    ann, img = _funsd_ann(
        tmp_path, shared_data, [{**ent, "label": "signature", "words": [{"text": "a", "box": [1, 1, 5, 5]}]}]
    )
    with pytest.raises(DataError, match="unknown label 'signature'"):
        load_funsd_page(ann, img, "funsd-train")
    ok = dict(
        words=["a"],
        boxes=np.array([[0, 0, 5, 5]]),
        seg_ids=np.array([0]),
        seg_boxes=np.array([[0, 0, 5, 5]]),
        size=(10, 10),
    )
    with pytest.raises(DataError, match="unknown label 'B-DATE'"):
        Page(page_id="p", source="x", labels=["B-DATE"], **ok)
    with pytest.raises(DataError, match="outside the page"):
        Page(page_id="p", source="x", **{**ok, "boxes": np.array([[0, 0, 5, 1001]])})


def test_sroie_field_labels_by_string_matching(shared_data):
    from pretrainkit.systems.bivldoc.data import sroie_field_tags

    pages = load_sroie(shared_data, limit=20)
    found = 0
    for p in pages:
        tags, missing = sroie_field_tags(p)
        found += 4 - len(missing)
        for field in set(p.fields) - set(missing):
            words = [w for w, t in zip(p.words, tags) if t.endswith(field.upper())]
            assert tags.count(f"B-{field.upper()}") == 1
            if field in ("date", "total"):  # short fields match exactly (spaces ignored)
                assert "".join(words).replace(" ", "").find(p.fields[field].replace(" ", "")) >= 0
    assert found >= 0.95 * 4 * len(pages)
    # the first receipt's line text has an OCR typo (BND for BHD): matched by similarity, whole line
    tags, _ = sroie_field_tags(pages[0])
    assert [w for w, t in zip(pages[0].words, tags) if t.endswith("COMPANY")][-1] == "BND"
