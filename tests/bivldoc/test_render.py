import numpy as np

from pretrainkit.systems.bivldoc.render import render_pages


def test_rendered_boxes_hold_their_ink(shared_data):
    for page in render_pages(3, shared_data, seed=1, size=(400, 520), noise=0.0):
        ink = np.asarray(page.image) < 200
        covered = np.zeros_like(ink)
        for x0, y0, x1, y1 in page.pixel_boxes:
            assert ink[y0 : y1 + 1, x0 : x1 + 1].any()  # every box holds ink
            covered[max(0, y0 - 1) : y1 + 2, max(0, x0 - 1) : x1 + 2] = True
        assert not (ink & ~covered).any()  # and no ink lies outside the boxes (1 px anti-aliasing slack)
        w, h = page.size
        assert (page.pixel_boxes[:, [0, 2]] <= w).all() and (page.pixel_boxes[:, [1, 3]] <= h).all()
        assert page.boxes.min() >= 0 and page.boxes.max() <= 1000
        assert len(page.seg_boxes) == page.seg_ids.max() + 1 and len(page.words) > 20


def test_rendered_pages_are_reproducible_and_noisy_pages_stay_inside(shared_data):
    a = render_pages(2, shared_data, seed=3, size=(300, 400), noise=1.0)
    b = render_pages(2, shared_data, seed=3, size=(300, 400), noise=1.0)
    assert [p.words for p in a] == [p.words for p in b]
    assert np.array_equal(np.asarray(a[0].image), np.asarray(b[0].image))
    assert all(p.boxes.max() <= 1000 for p in a)


def test_renderer_without_books_or_system_fonts():
    page = render_pages(1, None, seed=0, size=(300, 400), noise=0.0)[0]  # built-in words, Pillow's own font
    assert page.words and page.boxes.max() <= 1000
