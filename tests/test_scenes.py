"""Scene indexes (rsitr-search index --scenes): large GeoTIFF and plain scenes tiled window by window,
hits with their windows and WGS84 footprints, GeoJSON, overlap suppression, incremental updates, sharding
over two processes, and rsitr-app's scene view (answers and headless chromium)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import torch
from browser import ask_image, open_page, wait_for
from conftest import (
    HANG_TIMEOUT,
    TWO_PROCESS_LAUNCH,
    assert_one_line_error,
    index_embeddings,
    index_files,
    index_windows,
    interrupted_embedding,
    subprocess_env,
    write_format_2,
)

rasterio = pytest.importorskip("rasterio", reason="scene indexes need rasterio (pip install -e '.[scenes]')")
from rasterio.warp import transform as reproject_points  # noqa: E402

import rsitr_hf.search.scenes  # noqa: E402
import rsitr_hf.search.update  # noqa: E402
from rsitr_hf.search import ImageIndex, RetrievalModel, SearchError, build_index, main  # noqa: E402
from rsitr_hf.search.query import hits_geojson, similar_images  # noqa: E402
from rsitr_hf.search.scenes import Tiling, describe_scene, open_scene, read_tile, window_iou  # noqa: E402
from rsitr_hf.utils.errors import InputError  # noqa: E402

ORIGIN, PIXEL = (500_000.0, 5_000_000.0), 0.5  # UTM zone 33N (EPSG:32633), metres
OBJECT_WINDOW = (672, 336, 224, 224)  # where the object is planted, in pixels
NODATA_COLUMNS = 300  # the scene's left strip is nodata


def planted_object() -> np.ndarray:
    """A white cross on black, ``(224, 224, 3)`` uint8: the query."""
    image = np.zeros((224, 224, 3), np.uint8)
    image[40:180, 100:124] = 255
    image[90:120, 30:194] = 255
    return image


def write_scenes(folder: Path) -> Path:
    """``utm.tif``: 1200 x 900 px, 4 bands of 12-bit values in uint16 (multiples of 16, so that scaling by the
    scene's maximum 4080 gives back 8-bit values exactly), georeferenced in UTM, nodata 0 in the left strip,
    the object planted at ``OBJECT_WINDOW``; ``plain.png``: a 500 x 300 8-bit image without georeference."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    values = (rng.integers(1, 256, (4, 900, 1200)) * 16).astype(np.uint16)
    column, row, width, height = OBJECT_WINDOW
    values[:3, row : row + height, column : column + width] = (
        planted_object().transpose(2, 0, 1).astype(np.uint16) * 16
    )
    values[:, :, :NODATA_COLUMNS] = 0
    profile = {
        "driver": "GTiff", "width": 1200, "height": 900, "count": 4, "dtype": "uint16", "crs": "EPSG:32633",
        "transform": rasterio.Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]), "nodata": 0, "tiled": True,
    }  # fmt: skip
    with rasterio.open(folder / "utm.tif", "w", **profile) as scene:
        scene.write(values)
    PIL.Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)).save(folder / "plain.png")
    return folder


def object_centre_lon_lat() -> tuple[float, float]:
    column, row, width, height = OBJECT_WINDOW
    x, y = ORIGIN[0] + (column + width / 2) * PIXEL, ORIGIN[1] - (row + height / 2) * PIXEL
    longitudes, latitudes = reproject_points("EPSG:32633", "EPSG:4326", [x], [y])
    return longitudes[0], latitudes[0]


def inside(point: tuple[float, float], ring: list[list[float]]) -> bool:
    """Ray casting: whether ``point`` lies inside the closed ``ring``."""
    x, y = point
    crossings = 0
    for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            crossings += 1
    return crossings % 2 == 1


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = write_scenes(tmp_path_factory.mktemp("scenes") / "scenes")
    PIL.Image.fromarray(planted_object()).save(folder.parent / "query.png")
    return folder


def test_a_scene_whose_pixels_are_cut_short_is_named_in_one_line(tmp_path, scenes, tiny_clip_dir, capsys):
    folder = tmp_path / "scenes"
    folder.mkdir()
    shutil.copyfile(scenes / "plain.png", folder / "plain.png")
    index_dir = tmp_path / "index"
    arguments = ["index", "--scenes", str(folder), "--index", str(index_dir), "--model", str(tiny_clip_dir)]
    assert main(arguments) == 0
    before = index_files(ImageIndex.load(index_dir))
    whole = (scenes / "utm.tif").read_bytes()
    (folder / "utm.tif").write_bytes(whole[: len(whole) * 2 // 3])  # the header first, then pixels, cut short
    with open_scene(folder / "utm.tif") as scene:
        assert (scene.width, scene.height) == (1200, 900)  # the header reads
    assert_one_line_error(capsys, main(arguments), f"{folder / 'utm.tif'}: its pixels cannot be read")
    assert index_files(ImageIndex.load(index_dir)) == before and set(before) == {"plain.png"}


@pytest.fixture(scope="module")
def scene_index(tmp_path_factory, scenes, tiny_clip_dir) -> Path:
    index_dir = tmp_path_factory.mktemp("scene_index") / "index"
    arguments = ["index", "--scenes", str(scenes), "--index", str(index_dir), "--model", str(tiny_clip_dir)]
    assert main([*arguments, "--batch_size", "16"]) == 0
    return index_dir


# windows: utm.tif 10 columns (0, 112, ..., 896, then 976) x 8 rows (0, ..., 672, then 676), of which the
# 8 of column 0 lie in the nodata strip; plain.png 4 x 2
WINDOWS, SKIPPED = 80 + 8, 8


def test_scenes_are_read_window_by_window_and_the_top_hit_footprint_holds_the_object(
    tmp_path, scenes, tiny_clip_dir, monkeypatch, capsys
):
    reads = []
    original_read = rasterio.io.DatasetReader.read

    def recorded_read(self, *arguments, **options):
        values = original_read(self, *arguments, **options)
        reads.append(values.shape)
        return values

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recorded_read)
    monkeypatch.setattr(rsitr_hf.search.scenes, "SCALE_READ_SIDE", 200)
    index_dir = tmp_path / "index"
    arguments = ["index", "--scenes", str(scenes), "--index", str(index_dir), "--model", str(tiny_clip_dir)]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert f"2 scenes (2 tiled now: {WINDOWS} windows, {SKIPPED} without data skipped; 0 gone" in out
    # one read per window and one reduced read for the 16-bit scene's value range; none larger than a window
    assert len(reads) == WINDOWS + 1
    assert max(int(np.prod(shape[1:])) for shape in reads) <= 224 * 224 < 1200 * 900
    index = ImageIndex.load(index_dir)
    assert index_embeddings(index).shape[0] == len(index_windows(index)) == WINDOWS - SKIPPED
    utm = [
        window
        for name, window in zip(index_files(index), index_windows(index), strict=True)
        if name == "utm.tif"
    ]
    assert len(utm) == 72 and min(column for column, *_ in utm) == 112

    geojson, results = tmp_path / "hits.geojson", tmp_path / "hits.json"
    query = ["query", "--index", str(index_dir), "--image", str(scenes.parent / "query.png"), "--top_k", "3"]
    assert main([*query, "--geojson", str(geojson), "--json", str(results)]) == 0
    table = capsys.readouterr().out
    top = json.loads(geojson.read_text())["features"][0]
    assert top["properties"] | {"query": None} == {
        "query": None, "rank": 1, "score": 1.0, "scene": "utm.tif",
        "col_off": 672, "row_off": 336, "width": 224, "height": 224,
    }  # fmt: skip
    ring = top["geometry"]["coordinates"][0]
    assert top["geometry"]["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
    longitude, latitude = object_centre_lon_lat()
    assert inside((longitude, latitude), ring)
    assert not inside((longitude + 0.01, latitude), ring)
    assert sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:], strict=False)) > 0  # CCW
    first = json.loads(results.read_text())[0]["hits"][0]
    assert first["window"] == [672, 336, 224, 224] and first["footprint"] == ring
    assert first["path"] == str(scenes.resolve() / "utm.tif")
    assert f"utm.tif [x 672, y 336, 224x224] at {latitude:.4f}" in table.replace(
        f"{latitude:.6f}", f"{latitude:.4f}"
    )


def test_overlapping_hits_of_a_scene_are_suppressed(scene_index, scenes, tiny_clip_dir):
    index, model = ImageIndex.load(scene_index), RetrievalModel(tiny_clip_dir)
    query = PIL.Image.open(scenes.parent / "query.png")
    places = similar_images(index, model, query, k=6)
    assert len(places) == 6 and places[0].window == OBJECT_WINDOW and places[0].score == pytest.approx(1.0)
    for first in places:
        for second in places:
            if first is not second and first.item == second.item:
                assert window_iou(first.window, second.window) == 0
    everything = similar_images(index, model, query, k=6, max_overlap=1.0)
    scores = model.embed_images([query]) @ index_embeddings(index).T
    expected = scores[0].topk(6).indices.tolist()
    assert [(hit.item, hit.window) for hit in everything] == [
        (index_files(index)[row], index_windows(index)[row]) for row in expected
    ]
    assert any(window_iou(a.window, b.window) > 0 for a in everything for b in everything if a is not b)

    plain = next(hit for hit in similar_images(index, model, query, k=60) if hit.item == "plain.png")
    assert plain.footprint is None
    assert hits_geojson([("q", [plain])])["features"][0]["geometry"] is None


def test_bands_bit_depth_nodata_and_metres_are_read_as_documented(scenes):
    info = describe_scene(scenes / "utm.tif", Tiling())
    assert info.bands == [1, 2, 3] and info.scale == [0.0, 4080.0] and info.georeferenced
    assert info.tile == [224, 224] and info.stride == [112, 112] and len(info.windows()) == 80
    with open_scene(scenes / "utm.tif") as scene:
        assert np.array_equal(np.asarray(read_tile(scene, info, OBJECT_WINDOW)), planted_object())
        assert read_tile(scene, info, (0, 0, 224, 224)) is None  # nodata only
        partial = np.asarray(read_tile(scene, info, (112, 0, 224, 224)))
        assert (partial[:, : NODATA_COLUMNS - 112] == 0).all() and partial[:, NODATA_COLUMNS - 112 :].any()
        reversed_bands = describe_scene(scenes / "utm.tif", Tiling(bands=(3, 2, 1)))
        tile = np.asarray(read_tile(scene, reversed_bands, (400, 0, 224, 224)))
        assert np.array_equal(tile, np.asarray(read_tile(scene, info, (400, 0, 224, 224)))[..., ::-1])
    plain = describe_scene(scenes / "plain.png", Tiling())
    assert plain.scale is None and not plain.georeferenced and plain.footprint((0, 0, 224, 224)) is None
    assert [window[:2] for window in plain.windows()] == [(0, 0), (112, 0), (224, 0), (276, 0)] + [
        (0, 76), (112, 76), (224, 76), (276, 76)
    ]  # fmt: skip
    with open_scene(scenes / "plain.png") as scene:
        expected = np.asarray(PIL.Image.open(scenes / "plain.png"))[76:300, 276:500]
        assert np.array_equal(np.asarray(read_tile(scene, plain, (276, 76, 224, 224))), expected)
    metres = describe_scene(scenes / "utm.tif", Tiling(112, 56, "metres"))
    assert metres.tile == [224, 224] and metres.stride == [112, 112]
    with pytest.raises(InputError, match=r"plain\.png: --tile_unit metres needs a scene in a projected CRS"):
        describe_scene(scenes / "plain.png", Tiling(112, 56, "metres"))
    with pytest.raises(InputError, match=r"utm\.tif: --bands 5, but the scene has 4 band\(s\)"):
        describe_scene(scenes / "utm.tif", Tiling(bands=(5,)))
    with pytest.raises(InputError, match="one or three band numbers"):
        Tiling(bands=(1, 2))


def test_a_scene_index_updates_by_scene_and_keeps_its_tiling(tmp_path, scenes, tiny_clip_dir, monkeypatch):
    folder = tmp_path / "scenes"
    shutil.copytree(scenes, folder)
    model = RetrievalModel(tiny_clip_dir)
    build_index(folder, tmp_path / "index", model, batch_size=16, tiling=Tiling())
    embedded = []
    original = RetrievalModel.embed_images
    model.embed_images = lambda images: embedded.append(len(images)) or original(model, images)
    assert build_index(folder, tmp_path / "index", model, tiling=Tiling()).tiles == []
    assert embedded == []
    shutil.copy(folder / "plain.png", folder / "plain_copy.png")
    (folder / "utm.tif").unlink()
    update = build_index(folder, tmp_path / "index", model, batch_size=16, tiling=Tiling())
    assert update.added == ["plain_copy.png"] and update.removed == ["utm.tif"] and sum(embedded) == 8
    index = ImageIndex.load(tmp_path / "index")
    assert index_files(index) == ["plain.png"] * 8 + ["plain_copy.png"] * 8 and set(index.scenes) == {
        "plain.png",
        "plain_copy.png",
    }
    torch.testing.assert_close(index_embeddings(index)[:8], index_embeddings(index)[8:], rtol=0, atol=1e-6)
    with pytest.raises(SearchError, match="cuts its scenes as .* use the same --tile"):
        build_index(folder, tmp_path / "index", model, tiling=Tiling(stride=56))
    with pytest.raises(SearchError, match="is a scene index .*, not an index of images"):
        build_index(folder, tmp_path / "index", model)

    # interrupted in the middle of a scene: that scene is tiled again, whole, by the next run
    monkeypatch.setattr(rsitr_hf.search.update, "SAVE_EVERY_SECONDS", 0)
    restore = interrupted_embedding(model, after_batches=3)
    with pytest.raises(KeyboardInterrupt):
        build_index(scenes, tmp_path / "interrupted", model, batch_size=20, tiling=Tiling())
    partial = ImageIndex.load(tmp_path / "interrupted")
    # 3 batches of 20 saved: plain.png's 8 windows, then utm.tif's first 52 (rows 0-4 and 2 of row 5), of
    # which the 6 in column 0 are nodata
    assert partial.manifest.pending == ["utm.tif"] and len(index_files(partial)) == 60 - 6
    restore()
    update = build_index(scenes, tmp_path / "interrupted", model, batch_size=20, tiling=Tiling())
    assert update.added == ["utm.tif"] and len(update.tiles) == 80 and update.skipped == 8
    build_index(scenes, tmp_path / "fresh", model, batch_size=20, tiling=Tiling())
    resumed, fresh = ImageIndex.load(tmp_path / "interrupted"), ImageIndex.load(tmp_path / "fresh")
    assert resumed.manifest.pending == [] and index_files(resumed) == index_files(fresh)
    assert index_windows(resumed) == index_windows(fresh)
    torch.testing.assert_close(index_embeddings(resumed), index_embeddings(fresh), rtol=0, atol=1e-6)


def replace_with_its_corner(path: Path, width: int, height: int) -> None:
    """Write over the GeoTIFF at ``path`` its top-left ``width`` x ``height`` pixels: another, smaller scene
    under the same name."""
    with rasterio.open(path) as scene:
        profile, values = scene.profile, scene.read(window=rasterio.windows.Window(0, 0, width, height))
    with rasterio.open(path, "w", **{**profile, "width": width, "height": height}) as scene:
        scene.write(values)


def test_a_scene_replaced_under_its_name_is_left_out_of_answers_until_an_update_tiles_it_again(
    tmp_path, scenes, tiny_clip_dir, capsys
):
    from rsitr_hf.search.app import SearchPage
    from rsitr_hf.search.visualize import main as visualize_main

    folder, index_dir = tmp_path / "scenes", tmp_path / "index"
    shutil.copytree(scenes, folder)
    arguments = ["index", "--scenes", str(folder), "--index", str(index_dir), "--model", str(tiny_clip_dir)]
    assert main(arguments) == 0
    indexed = ImageIndex.load(index_dir).scenes["utm.tif"]
    replace_with_its_corner(folder / "utm.tif", 600, 450)  # the object's window (x 672) now lies outside it
    size = (folder / "utm.tif").stat().st_size
    warning = (
        f"warning: 1 scene(s) changed since indexing, their windows left out (utm.tif: {size:,} bytes, "
        f"{indexed.fingerprint.size:,} when indexed): update the index with rsitr-search index --scenes "
        f"{folder.resolve()} --index {index_dir}"
    )
    capsys.readouterr()

    # query: every window asked for, only the unchanged scene's come back, and one line says why
    query = ["query", "--index", str(index_dir), "--image", str(scenes.parent / "query.png"), "--json", "-"]
    assert main([*query, "--top_k", "80", "--max_overlap", "1"]) == 0
    captured = capsys.readouterr()
    hits = json.loads(captured.out)[0]["hits"]
    assert len(hits) == 8 and {Path(hit["path"]).name for hit in hits} == {"plain.png"}
    assert [line for line in captured.err.splitlines() if "warning" in line] == [warning]

    # rsitr-visualize and rsitr-app draw no window of it and say so
    (tmp_path / "queries.tsv").write_text("a white cross\n")
    grid = ["--index", str(index_dir), "--queries", str(tmp_path / "queries.tsv"), "--top_k", "3"]
    assert visualize_main([*grid, "--out", str(tmp_path / "grid.png")]) == 0
    assert warning in capsys.readouterr().err.splitlines()
    gallery, summary, views = SearchPage.open(index_dir).image_query(
        PIL.Image.open(scenes.parent / "query.png"), 3
    )
    assert all(" plain.png [" in caption for _, caption in gallery) and len(views) == 1
    assert summary.endswith(f"**Warning:** {warning.removeprefix('warning: ')}")
    # a window read from a scene whose size changed (after the search checked it) is refused, never read
    with pytest.raises(InputError, match="utm.tif: 600 x 450 pixels, 1200 x 900 when indexed: it changed"):
        rsitr_hf.search.scenes.read_tiles(str(folder), [("utm.tif", OBJECT_WINDOW)], {"utm.tif": indexed})

    # an update tiles it again: the index equals one built from scratch, and answers from it without a word
    capsys.readouterr()
    assert main(arguments) == 0
    assert (
        "2 scenes (1 tiled now, 1 of them changed since they were tiled: 20 windows"
        in capsys.readouterr().out
    )
    fresh_dir = tmp_path / "fresh"
    assert (
        main(["index", "--scenes", str(folder), "--index", str(fresh_dir), "--model", str(tiny_clip_dir)])
        == 0
    )
    updated, fresh = ImageIndex.load(index_dir), ImageIndex.load(fresh_dir)
    assert updated.scenes == fresh.scenes and updated.scenes["utm.tif"].width == 600
    assert (index_files(updated), index_windows(updated)) == (index_files(fresh), index_windows(fresh))
    torch.testing.assert_close(index_embeddings(updated), index_embeddings(fresh), rtol=0, atol=1e-6)
    capsys.readouterr()
    assert main([*query, "--top_k", "80", "--max_overlap", "1"]) == 0
    captured = capsys.readouterr()
    assert "utm.tif" in {Path(hit["path"]).name for hit in json.loads(captured.out)[0]["hits"]}
    assert "warning" not in captured.err

    # a scene only touched (another modification time) is tiled again too: the fingerprint cannot tell
    modified = (folder / "plain.png").stat().st_mtime_ns + 10**9
    os.utime(folder / "plain.png", ns=(modified, modified))
    assert main(arguments) == 0
    assert (
        "2 scenes (1 tiled now, 1 of them changed since they were tiled: 8 windows" in capsys.readouterr().out
    )


def test_bad_scene_arguments_are_one_line_errors(tmp_path, scenes, tiny_clip_dir, capsys):
    base = ["index", "--index", str(tmp_path / "index"), "--model", str(tiny_clip_dir)]
    assert main([*base, str(scenes), "--scenes", str(scenes)]) == 2
    assert "give an IMAGE_DIR, or --scenes SCENE_DIR (not both)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_status:
        main([*base, "--scenes", str(scenes), "--bands", "4,x"])
    assert exit_status.value.code == 2
    assert "expected band numbers separated by commas" in capsys.readouterr().err
    assert main([*base, "--scenes", str(scenes), "--tile_unit", "metres"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "plain.png: --tile_unit metres needs a scene in a projected CRS" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scene.tif").write_bytes(b"II*\x00 not a tiff")
    assert main([*base, "--scenes", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: {broken / 'scene.tif'}: not a readable scene" in err


def test_a_two_process_sharded_scene_index_equals_the_one_process_index(tmp_path, scenes, scene_index):
    """``accelerate launch -m rsitr_hf.search index --scenes``: two gloo processes share the windows."""
    single = ImageIndex.load(scene_index)
    arguments = ["index", "--scenes", str(scenes), "--model", single.model.base_model, "--batch_size", "16"]
    arguments += ["--index", str(tmp_path / "i")]
    result = subprocess.run(
        [sys.executable, *TWO_PROCESS_LAUNCH, "-m", "rsitr_hf.search", *arguments],
        capture_output=True, text=True, env=subprocess_env(), timeout=HANG_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"2 scenes (2 tiled now: {WINDOWS} windows, {SKIPPED} without data") == 1
    sharded = ImageIndex.load(tmp_path / "i")
    assert index_files(sharded) == index_files(single) and index_windows(sharded) == index_windows(single)
    assert sharded.scenes == single.scenes
    torch.testing.assert_close(index_embeddings(sharded), index_embeddings(single), rtol=0, atol=1e-5)


def test_the_app_shows_each_hit_window_and_its_scene_with_the_windows_drawn(scene_index, scenes):
    pytest.importorskip("gradio", reason="rsitr-app needs gradio (pip install -e '.[app]')")
    from rsitr_hf.search.app import SearchPage

    page = SearchPage.open(scene_index)
    assert "search 80 tiles of 2 scenes" in page.header()
    gallery, summary, views = page.image_query(PIL.Image.open(scenes.parent / "query.png"), 3)
    assert summary.startswith("3 best places of 80 tiles of 2 scenes for the image (")
    assert gallery[0][1].startswith("1. utm.tif [x 672, y 336, 224x224] at 45.15") and gallery[0][1].endswith(
        "(1.000)"
    )
    assert np.array_equal(np.asarray(gallery[0][0]), planted_object())  # the window, read from the scene
    overview, caption = views[0]
    assert caption.startswith("utm.tif: hits 1") and overview.size == (1024, 768)
    pixels = np.asarray(overview)
    column, row, width, height = (round(value * 1024 / 1200) for value in OBJECT_WINDOW)
    assert tuple(pixels[row + height // 2, column]) == (255, 40, 40)  # the window outlined in red
    assert len(page.shown(page.image_query(PIL.Image.open(scenes.parent / "query.png"), 3))) == 3
    # the area box: only windows whose footprint meets it (here a box west of the object's window)
    longitude, latitude = object_centre_lon_lat()
    west_box = f"{longitude - 0.004},{latitude - 0.0002},{longitude - 0.0016},{latitude + 0.0002}"
    gallery, summary, _ = page.text_query("a white cross", 3, west_box)
    assert summary.startswith("3 best places") and all("utm.tif" in caption for _, caption in gallery)
    assert not any("[x 672, y 336" in caption for _, caption in gallery)
    with pytest.raises(SearchError, match="--bbox: expected minlon,minlat,maxlon,maxlat"):
        page.text_query("a white cross", 3, "here")


def test_in_a_browser_an_image_query_shows_windows_and_scene_overviews(scene_index, scenes, browser):
    from selenium.webdriver.common.by import By

    from rsitr_hf.search.app import SearchPage, build_app

    blocks = build_app(SearchPage.open(scene_index), top_k=3)
    blocks.launch(prevent_thread_lock=True, quiet=True)
    try:
        open_page(browser, blocks.local_url)
        answer = ask_image(browser, scenes.parent / "query.png")
        assert answer.captions[0].startswith("1. utm.tif [x 672, y 336, 224x224]")
        views = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#image_scenes .caption-label"))
        assert views[0].text.startswith("utm.tif: hits 1")
        shown = browser.find_element(By.CSS_SELECTOR, "#image_scenes img")
        assert shown.get_attribute("naturalWidth") == "1024"
    finally:
        blocks.close()


def test_rsitr_visualize_draws_the_windows_of_a_scene_index(scene_index, tmp_path):
    from rsitr_hf.search.visualize import index_rows
    from rsitr_hf.search.visualize import main as visualize_main

    rows = index_rows(scene_index, [("a white cross", None)], top_k=3)
    assert len(rows[0].images) == 3 and all(image.size == (224, 224) for image in rows[0].images)
    (tmp_path / "queries.tsv").write_text("a white cross\n")
    arguments = ["--index", str(scene_index), "--queries", str(tmp_path / "queries.tsv"), "--out"]
    assert visualize_main([*arguments, str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_a_scene_index_is_geoparquet_and_exports_the_footprints_the_query_prints(
    scene_index, scenes, tmp_path, capsys
):
    geopandas = pytest.importorskip("geopandas", reason="the GeoParquet check reads with GeoPandas")
    import pyproj
    import shapely

    query = ["query", "--index", str(scene_index), "--image", str(scenes.parent / "query.png")]
    assert main([*query, "--top_k", "80", "--max_overlap", "1", "--json", "-"]) == 0  # every window
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    out = tmp_path / "tiles.parquet"
    assert main(["export", "--index", str(scene_index), str(out)]) == 0
    assert "80 tiles of 2 scenes with their 24-dimensional embeddings (GeoParquet)" in capsys.readouterr().out
    frame = geopandas.read_parquet(out)
    assert frame.crs.equals(pyproj.CRS("OGC:CRS84")) and frame.geometry.name == "geometry"
    index = ImageIndex.load(scene_index)
    assert frame["scene"].tolist() == index_files(index) and len(frame) == 80
    np.testing.assert_array_equal(np.stack(frame["embedding"]), index_embeddings(index).numpy())
    rows = {(scene, (c, r, w, h)): geometry for scene, c, r, w, h, geometry in zip(
        frame["scene"], frame["col_off"], frame["row_off"], frame["width"], frame["height"], frame.geometry,
        strict=True)}  # fmt: skip
    georeferenced = [hit for hit in hits if hit["footprint"] is not None]
    assert georeferenced and len(georeferenced) < len(hits)  # both kinds of scene among the hits
    for hit in hits:
        geometry = rows[(Path(hit["path"]).name, tuple(hit["window"]))]
        if hit["footprint"] is None:
            assert geometry is None
        else:
            assert shapely.equals_exact(geometry, shapely.Polygon(hit["footprint"]), tolerance=0)
    for box, geometry in zip(pq.read_table(out)["bbox"].to_pylist(), frame.geometry, strict=True):
        bounds = None if box is None else (box["xmin"], box["ymin"], box["xmax"], box["ymax"])
        assert bounds == (None if geometry is None else geometry.bounds)  # the bbox covering column
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == [
        "bbox",
        "xmin",
    ]
    assert geo["columns"]["geometry"]["bbox"] == list(frame.geometry.total_bounds)
    (shard_rows,) = scene_index.glob("shard-*/rows.parquet")  # each shard's table is GeoParquet itself
    assert geopandas.read_parquet(shard_rows).geometry.equals(frame.geometry)


def test_a_format_2_scene_index_is_converted_with_its_windows(tmp_path, scenes, scene_index, tiny_clip_dir):
    index_dir = tmp_path / "index"
    shutil.copytree(scene_index, index_dir)
    built = ImageIndex.load(index_dir)
    expected = (index_files(built), index_windows(built), index_embeddings(built), built.scenes)
    write_format_2(index_dir, built)
    update = build_index(scenes, index_dir, RetrievalModel(tiny_clip_dir), tiling=Tiling())
    assert update.added == [] and not (index_dir / "index.json").exists()
    converted = ImageIndex.load(index_dir)
    assert (index_files(converted), index_windows(converted)) == expected[
        :2
    ] and converted.scenes == expected[3]
    torch.testing.assert_close(index_embeddings(converted), expected[2], rtol=0, atol=0)
    (shard_rows,) = index_dir.glob("shard-*/rows.parquet")
    (original_rows,) = scene_index.glob("shard-*/rows.parquet")
    converted_rows, original = pq.read_table(shard_rows), pq.read_table(original_rows)
    assert converted_rows.drop(["row_id"]).equals(original.drop(["row_id"]))  # footprints included
    assert converted_rows["row_id"].to_pylist() == list(range(80))  # format 2 numbered its rows densely


def test_bbox_and_within_return_only_the_hits_whose_footprint_meets_the_area(
    scene_index, scenes, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("shapely", reason="spatial filters need shapely (pip install -e '.[scenes]')")
    import shapely
    import shapely.geometry

    import rsitr_hf.search.index

    longitude, latitude = object_centre_lon_lat()
    box = f"{longitude - 0.0004},{latitude - 0.0002},{longitude + 0.0004},{latitude + 0.0002}"  # ~60 x 45 m
    area = shapely.box(*(float(value) for value in box.split(",")))
    query = ["query", "--index", str(scene_index), "--image", str(scenes.parent / "query.png")]
    query += ["--top_k", "80", "--max_overlap", "1", "--json", "-"]
    assert main(query) == 0
    everything = json.loads(capsys.readouterr().out)[0]["hits"]
    meeting = {
        (hit["path"], tuple(hit["window"]))
        for hit in everything
        if hit["footprint"] is not None and shapely.intersects(shapely.Polygon(hit["footprint"]), area)
    }
    assert 1 < len(meeting) < 20  # a few windows of utm.tif; none of plain.png, which has no footprint

    assert main([*query, "--bbox", box]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    assert {(hit["path"], tuple(hit["window"])) for hit in hits} == meeting
    assert tuple(hits[0]["window"]) == OBJECT_WINDOW and hits[0]["score"] == pytest.approx(1.0)
    geojson = tmp_path / "area.geojson"
    feature = {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(area)}
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    assert main([*query, "--within", str(geojson)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["hits"] == hits
    # through FAISS with an ID selector when the area holds more rows than exact scoring takes
    flat = tmp_path / "flat"
    shutil.copytree(scene_index, flat)
    arguments = ["index", "--scenes", str(scenes), "--index", str(flat), "--ann", "flat"]
    assert main([*arguments, "--model", ImageIndex.load(flat).model.base_model]) == 0
    monkeypatch.setattr(rsitr_hf.search.index, "FILTER_EXACT_ROWS", 0)
    capsys.readouterr()
    assert main([*query[:2], str(flat), *query[3:], "--bbox", box]) == 0
    assert {
        (hit["path"], tuple(hit["window"])) for hit in json.loads(capsys.readouterr().out)[0]["hits"]
    } == meeting

    for bad, expected in [
        (["--bbox", "1,2,3"], "--bbox: expected minlon,minlat,maxlon,maxlat (four numbers), got '1,2,3'"),
        (["--bbox", "10,50,9,51"], "--bbox: expected -180 <= minlon < maxlon <= 180"),
        (["--within", str(scenes.parent / "query.png")], "query.png: not a GeoJSON file of polygons"),
    ]:
        assert_one_line_error(capsys, main([*query, *bad]), expected)
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "Point", "coordinates": [longitude, latitude]}))
    assert_one_line_error(capsys, main([*query, "--within", str(points)]), "no Polygon or MultiPolygon")
