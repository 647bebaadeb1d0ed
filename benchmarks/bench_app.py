"""``rsitr-app`` in a real browser: how long a text query takes to show its images, on this machine.

    python benchmarks/bench_app.py [--num_images 10000] [--work_dir outputs/bench_app] [--queries 20]
        [--model DIR] [--screenshot PNG]
    python benchmarks/bench_app.py --index INDEX_DIR --query TEXT --screenshot PNG   # a screenshot only

Without ``--index``: writes ``--num_images`` synthetic aerial images (256 x 256, the seed layout's
generator, seeded) and indexes them with ``--model``, by default a CLIP of ViT-B/32's shape (12 + 12
layers, widths 512 / 768, 224-px images in 32-px patches, projection 512; random weights, since
``openai/clip-vit-base-patch32`` cannot be downloaded here, with the synthetic vocabulary's word-level
tokenizer). Both are kept in ``--work_dir`` and reused by later runs. Then it serves the index with
``rsitr-app``, opens it in Debian's headless chromium, and for each of ``--queries`` distinct captions
types the query, presses Enter and times until the gallery and its summary are on screen. It reports the
p50 / p95 / max of that time and of the server's own share (embedding the query, searching, making the
thumbnails), and checks the first image shown against ``rsitr-search``'s answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from gradio import __version__ as gradio_version

from rsitr_hf.demo.readme import this_machine
from rsitr_hf.demo.synthetic import vocabulary, write_seed_layout
from rsitr_hf.demo.tiny_clip import save_tiny_clip
from rsitr_hf.search import RetrievalModel, build_index, search_images
from rsitr_hf.search.app import SearchPage, build_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the browser driver of the tests
from browser import ask_text, headless_chromium, open_page  # noqa: E402

VIT_B32_SHAPE = dict(
    text_width=512,
    vision_width=768,
    projection_dim=512,
    num_layers=12,
    num_heads=8,
    image_size=224,
    patch_size=32,
)


def archive_index(work_dir: Path, num_images: int, model_dir: str | None) -> Path:
    """An index of ``num_images`` synthetic images under ``work_dir`` (made once, then reused)."""
    if model_dir is None:
        model_dir = work_dir / "clip_vit_b32_shape"
        if not (model_dir / "config.json").is_file():
            save_tiny_clip(model_dir, vocabulary(), seed=0, **VIT_B32_SHAPE)
    data = work_dir / f"archive_{num_images}" / "archive_precomp"
    if not (data / "train_caps.txt").is_file():
        write_seed_layout(data.parent, "archive", num_train=num_images, num_test=0, seed=0, image_size=256)
    index_dir = work_dir / f"index_{num_images}"
    build_index(data / "archive_images", index_dir, RetrievalModel(model_dir), batch_size=64)
    return index_dir


def distinct_queries(index_dir: Path, count: int) -> list[str]:
    captions = (
        (Path(SearchPage.open(index_dir).index.root).parent / "train_caps.txt").read_text().splitlines()
    )
    return list(dict.fromkeys(captions))[:count]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_images", type=int, default=10_000, help="synthetic images to index")
    parser.add_argument(
        "--work_dir", default="outputs/bench_app", help="where the images, model and index live"
    )
    parser.add_argument("--queries", type=int, default=20, help="text queries to time")
    parser.add_argument("--model", help="base CLIP to index with (default: ViT-B/32's shape, random weights)")
    parser.add_argument("--index", help="an existing index: only serve it, ask --query and take --screenshot")
    parser.add_argument(
        "--query", default="many planes parked at the airport", help="query of the screenshot"
    )
    parser.add_argument("--screenshot", help="save the page after the last query as this PNG")
    args = parser.parse_args()

    index_dir = (
        Path(args.index) if args.index else archive_index(Path(args.work_dir), args.num_images, args.model)
    )
    page = SearchPage.open(index_dir)
    queries = [args.query] if args.index else distinct_queries(index_dir, args.queries + 1)
    blocks = build_app(page, top_k=12)
    blocks.launch(prevent_thread_lock=True, quiet=True)
    driver = headless_chromium(1280, 1000)
    try:
        open_page(driver, blocks.local_url)
        if not args.index:
            ask_text(driver, queries.pop())  # warm-up: the first answer loads the page's gallery code
        browser_seconds, server_ms = [], []
        for query in queries:
            answer = ask_text(driver, query)
            expected = search_images(page.index, page.model, [query], k=1)[0][0]
            if not answer.captions[0].startswith(f"1. {expected.item} "):
                raise SystemExit(
                    f"the page showed {answer.captions[0]!r} first, rsitr-search {expected.item!r}"
                )
            browser_seconds.append(answer.seconds)
            server_ms.append(float(answer.summary.rsplit("(", 1)[1].split(" ms")[0]))
        if args.screenshot:
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.screenshot)
    finally:
        driver.quit()
        blocks.close()
    if args.index:  # a screenshot of one query: nothing to time
        shown = args.screenshot or "no screenshot asked"
        print(f"{shown}: {queries[0]!r} answered in {browser_seconds[0]:.3f} s")
        return 0
    p95 = {
        name: statistics.quantiles(values, n=20)[18]
        for name, values in (("browser", browser_seconds), ("server", server_ms))
    }
    report = {
        "machine": this_machine(),
        "browser": f"{driver.capabilities['browserName']} {driver.capabilities['browserVersion']} headless",
        "gradio": gradio_version,
        "images": len(page.index.files),
        "model": page.model.identity.describe(),
        "search": page.index.ann.factory if page.index.ann is not None else "exact",
        "queries": len(browser_seconds),
        "browser_seconds": {
            "p50": round(statistics.median(browser_seconds), 3),
            "p95": round(p95["browser"], 3),
            "max": round(max(browser_seconds), 3),
        },
        "server_ms": {
            "p50": statistics.median(server_ms),
            "p95": round(p95["server"], 1),
            "max": max(server_ms),
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
