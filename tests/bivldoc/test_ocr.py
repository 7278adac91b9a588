import pytest

from pretrainkit.errors import DataError
from pretrainkit.systems.bivldoc import ocr
from pretrainkit.systems.bivldoc.render import render_pages

needs_tesseract = pytest.mark.skipif(
    ocr.tesseract_available() is None,
    reason="the tesseract binary is not installed (apt-get install tesseract-ocr)",
)


@needs_tesseract
def test_ocr_reads_a_rendered_page_and_caches_it(shared_data, tmp_path, monkeypatch):
    pytest.importorskip("pytesseract")
    page = render_pages(1, shared_data, seed=2, size=(612, 792), noise=0.0)[0]
    path = tmp_path / "page.png"
    page.image.save(path)
    got = ocr.ocr_page(path, tmp_path / "cache")
    truth = {w.lower() for w in page.words}
    assert len(truth & {w.lower() for w in got.words}) / len(truth) > 0.8
    assert got.boxes.max() <= 1000 and len(got.seg_boxes) == got.seg_ids.max() + 1
    # the second read comes from the cache: tesseract is not run again
    monkeypatch.setattr(ocr, "ocr_words", lambda *_: (_ for _ in ()).throw(AssertionError("OCR ran again")))
    again = ocr.ocr_page(path, tmp_path / "cache")
    assert again.words == got.words


def test_missing_tesseract_says_what_to_install(tmp_path, monkeypatch):
    page = render_pages(1, None, seed=0, size=(200, 200), noise=0.0)[0]
    path = tmp_path / "p.png"
    page.image.save(path)
    monkeypatch.setattr(ocr, "tesseract_available", lambda: None)
    with pytest.raises(DataError, match="apt-get install tesseract-ocr"):
        ocr.ocr_page(path, None)


def test_ocr_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ocr.ocr_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no page images"):
        ocr.ocr_folder(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="bad.png"):
        ocr.ocr_folder(tmp_path)
