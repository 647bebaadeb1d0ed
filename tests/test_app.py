"""rsitr-app: the search page's answers (text and image queries, another model refused), and the page itself
driven in a real browser (Debian's chromium, headless, through selenium and chromium-driver)."""

import shutil
from pathlib import Path

import pytest
from browser import ask_image, ask_text, open_page, wait_for

from rsitr_hf.demo.synthetic import vocabulary
from rsitr_hf.demo.tiny_clip import save_tiny_clip
from rsitr_hf.search import RetrievalModel, SearchError, build_index, list_images, read_image, search_images
from rsitr_hf.search.app import SearchPage, build_app, main

QUERY = "many planes parked at the airport"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, synthetic_dir, tiny_clip_dir) -> Path:
    """An index of 10 synthetic test images, built with the tiny CLIP."""
    folder = tmp_path_factory.mktemp("app") / "images"
    folder.mkdir()
    for path in sorted((synthetic_dir / "synthrs_images").glob("test_*.tif"))[:10]:
        shutil.copy(path, folder / path.name)
    build_index(folder, folder.parent / "index", RetrievalModel(tiny_clip_dir), batch_size=4)
    return folder.parent / "index"


@pytest.fixture(scope="module")
def other_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("other_clip"), vocabulary(), seed=1)


def test_the_page_answers_text_and_image_queries_like_rsitr_search(index_dir):
    pytest.importorskip("gradio", reason="rsitr-app needs gradio (pip install -e '.[app]')")
    page = SearchPage.open(index_dir)
    assert page.problem is None and "search 10 images" in page.header() and "exact search" in page.header()
    expected = search_images(page.index, page.model, [QUERY], k=4)[0]
    gallery, summary, scenes = page.text_query(QUERY, 4)
    assert scenes is None and len(page.shown(page.text_query(QUERY, 4))) == 2  # no scene gallery
    assert [caption for _, caption in gallery] == [f"{h.rank}. {h.item} ({h.score:.3f})" for h in expected]
    assert summary.startswith(f"4 best of 10 images for “{QUERY}” (") and summary.endswith(" ms)")
    first = read_image(Path(page.index.root) / expected[0].item)
    assert gallery[0][0].size == first.size and list(gallery[0][0].getdata()) == list(first.getdata())
    name = list_images(page.index.root)[6]
    nearest = page.image_query(read_image(Path(page.index.root) / name), 3).gallery
    assert len(nearest) == 3 and nearest[0][1] == f"1. {name} (1.000)"  # an indexed image finds itself
    with pytest.raises(SearchError, match="upload an image"):
        page.image_query(None, 3)
    with pytest.raises(SearchError, match="non-empty"):
        page.text_query("  ", 3)


def test_another_model_is_named_on_the_page_and_cannot_search(index_dir, other_clip_dir, tiny_clip_dir):
    pytest.importorskip("gradio", reason="rsitr-app needs gradio (pip install -e '.[app]')")
    page = SearchPage.open(index_dir, base_model=str(other_clip_dir))
    assert f"was built with {Path(tiny_clip_dir).resolve()} (no adapter), not with" in page.problem
    assert str(Path(other_clip_dir).resolve()) in page.header()
    with pytest.raises(SearchError, match="was built with"):
        page.text_query(QUERY, 3)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["--index", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["--index", str(tmp_path), "--top_k", "0"]) == 2
    assert "--top_k: expected 1 to 50, got 0" in capsys.readouterr().err


def launched(page: SearchPage, top_k: int):
    blocks = build_app(page, top_k)
    blocks.launch(prevent_thread_lock=True, quiet=True)
    return blocks


def test_in_a_browser_a_typed_query_shows_the_expected_images(index_dir, other_clip_dir, browser):
    from selenium.webdriver.common.by import By

    page = SearchPage.open(index_dir)
    expected = search_images(page.index, page.model, [QUERY], k=3)[0]
    blocks = launched(page, top_k=3)
    try:
        open_page(browser, blocks.local_url)
        assert page.model.identity.describe() in browser.find_element(By.ID, "header").text
        answer = ask_text(browser, QUERY)
        assert answer.captions == [f"{h.rank}. {h.item} ({h.score:.3f})" for h in expected]
        assert answer.summary.startswith(f"3 best of 10 images for “{QUERY}” (")
        first = browser.find_element(By.CSS_SELECTOR, "#text_results img")
        assert first.get_attribute("alt") == answer.captions[0] and first.get_attribute("naturalWidth") != "0"
        name = list_images(page.index.root)[2]
        assert ask_image(browser, Path(page.index.root) / name).captions[0] == f"1. {name} (1.000)"
    finally:
        blocks.close()

    mismatched = launched(SearchPage.open(index_dir, base_model=str(other_clip_dir)), top_k=3)
    try:
        browser.get(mismatched.local_url)
        problem = wait_for(browser, lambda d: d.find_elements(By.ID, "problem"))[0]
        assert (
            "This index cannot be searched with this model." in problem.text
            and "was built with" in problem.text
        )
        assert not browser.find_element(By.CSS_SELECTOR, "#query textarea").is_enabled()
    finally:
        mismatched.close()


def test_the_searches_are_gradio_api_endpoints(index_dir):
    pytest.importorskip("gradio", reason="rsitr-app needs gradio (pip install -e '.[app]')")
    from gradio_client import Client

    page = SearchPage.open(index_dir)
    expected = search_images(page.index, page.model, [QUERY], k=2)[0]
    blocks = launched(page, top_k=2)
    try:
        gallery, summary = Client(blocks.local_url, verbose=False).predict(QUERY, 2, api_name="/search_text")
    finally:
        blocks.close()
    assert [item["caption"] for item in gallery] == [f"{h.rank}. {h.item} ({h.score:.3f})" for h in expected]
    assert summary.startswith(f"2 best of 10 images for “{QUERY}” (")
