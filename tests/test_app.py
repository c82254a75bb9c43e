"""`serving.app`: the search page and its JSON API over an index of codes from a real
`serving.server`, through Flask's test client and through headless Chromium."""

import io
import os
import re
import shutil
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving_support import REPO_ROOT, encoded_images, sample_images

from harr_tf.index import HammingIndex
from harr_tf.retrieval import hamming_distances
from serving.app import create_app
from serving.app import main as app_main
from serving.client import ServingClient
from serving.encode import main as encode_main
from serving.search import main as search_main

CLASSES = {"blobs": 0, "specks": 1}
PER_CLASS = 12
READY = re.compile(r"Search page on (?P<url>http://\S+)")


@pytest.fixture(scope="module")
def collection(grpc_server, tmp_path_factory):
    """Yields (image folder with a sub-folder per class, index file, {id: ±1 code})."""
    root = tmp_path_factory.mktemp("app")
    folder = root / "images"
    for name, seed in CLASSES.items():
        (folder / name).mkdir(parents=True)
        for number, contents in enumerate(encoded_images(sample_images(PER_CLASS, seed=seed))):
            (folder / name / f"{number:02d}.png").write_bytes(contents)
    codes, index_file = root / "codes.npz", root / "harr.faiss"
    assert encode_main(["--server", grpc_server, "--input", str(folder), "--out", str(codes)]) == 0
    assert search_main(["build", "--codes", str(codes), "--index", str(index_file)]) == 0
    with np.load(codes) as archive:
        return folder, index_file, dict(zip(archive["ids"].tolist(), archive["codes"], strict=True))


@pytest.fixture(scope="module")
def api(grpc_server, collection):
    folder, index_file, _ = collection
    with ServingClient(grpc_server) as client:
        app = create_app(
            HammingIndex.load(index_file), client, folder, top_k=5, max_upload_bytes=4096
        )
        yield app.test_client()


def expected_distances(codes: dict, item: str, k: int) -> list[int]:
    ids = list(codes)
    everything = np.stack([codes[other] for other in ids])
    return np.sort(hamming_distances(codes[item][None], everything)[0])[:k].tolist()


def upload(api, contents: bytes, name: str = "query.png"):
    return api.post("/api/search", data={"image": (io.BytesIO(contents), name)})


def test_search_answers_the_top_k_with_hamming_distances_and_thumbnails(api, collection):
    folder, _, codes = collection
    response = upload(api, (folder / "specks" / "04.png").read_bytes())
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["distance"] for r in results] == expected_distances(codes, "specks/04.png", 5)
    assert results[0] == {
        "id": "specks/04.png",
        "distance": 0,
        "class": "specks",
        "thumbnail": "/thumbnails/specks/04.png",
    }
    thumbnail = api.get(results[1]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/png"
    assert thumbnail.data[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_upload_re_ranked_by_its_continuous_code(grpc_server, collection):
    folder, index_file, codes = collection
    contents = (folder / "blobs" / "05.png").read_bytes()
    with ServingClient(grpc_server) as client:
        h = client.encode([contents], continuous=True).continuous[0]
        index = HammingIndex.load(index_file)
        app = create_app(index, client, folder, top_k=4, rerank=len(index))
        results = upload(app.test_client(), contents).get_json()["results"]
    scores = np.stack([codes[item] for item in index.ids]).astype(np.float64) @ h
    expected = np.lexsort((np.arange(len(index)), -scores))[:4]
    assert [r["id"] for r in results] == [index.ids[i] for i in expected]
    np.testing.assert_allclose([r["score"] for r in results], scores[expected], rtol=1e-5)


def test_an_item_answers_its_neighbours_and_whether_they_share_its_class(api, collection):
    _, _, codes = collection
    answer = api.get("/api/items/blobs/07.png").get_json()
    assert (answer["id"], answer["class"]) == ("blobs/07.png", "blobs")
    results = answer["results"]
    assert [r["distance"] for r in results] == expected_distances(codes, "blobs/07.png", 5)
    assert [r["same_class"] for r in results] == [r["id"].startswith("blobs/") for r in results]
    assert results[0]["id"] == "blobs/07.png"


def test_bad_requests_get_a_clear_message(api):
    response = api.get("/api/items/blobs/99.png")
    assert response.status_code == 404
    assert response.get_json() == {"error": "No item 'blobs/99.png' in the index."}
    response = upload(api, b"hello, not an image", "notes.txt")
    assert response.status_code == 400
    assert response.get_json()["error"] == (
        "notes.txt is not an image: expected a PNG, JPEG, GIF or BMP file."
    )
    big = encoded_images(np.random.default_rng(0).integers(0, 255, (1, 64, 64, 1), np.uint8))[0]
    assert len(big) > 4096
    response = upload(api, big)
    assert response.status_code == 413
    assert response.get_json()["error"] == "The upload is larger than the limit of 0.00390625 MB."
    response = api.post("/api/search", data={})
    assert response.status_code == 400 and "field 'image'" in response.get_json()["error"]
    assert api.get("/thumbnails/../codes.npz").status_code == 404


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width × height pixels and holds none (about 60 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture
def offline_app(tmp_path):
    """A page over 3 items, one with a newline in its id, whose model server is
    unreachable: an upload that reached the model would get a 502."""
    folder = tmp_path / "images"
    ids = ["blobs/00.png", "blobs/line\nbreak.png", "specks/00.png"]
    for item, contents in zip(ids, encoded_images(sample_images(3)), strict=True):
        (folder / item).parent.mkdir(parents=True, exist_ok=True)
        (folder / item).write_bytes(contents)
    packed = np.array([[0, 0], [0, 1], [255, 255]], np.uint8)
    with ServingClient("127.0.0.1:1", retries=0) as client:
        yield create_app(HammingIndex.build(packed, ids), client, folder, top_k=2).test_client()


def test_a_decompression_bomb_upload_is_refused_from_its_header(offline_app):
    blank = io.BytesIO()
    Image.new("L", (8000, 8000)).save(blank, "PNG")
    response = upload(offline_app, blank.getvalue(), "big.png")
    assert len(blank.getvalue()) < 64 * 1024 and response.status_code == 400
    assert response.get_json()["error"] == (
        "big.png is 8000 x 8000 pixels, over the limit of 40000000 pixels."
    )
    bomb = png_header(100_000, 100_000)
    response = upload(offline_app, bomb, "bomb.png")
    assert len(bomb) < 100 and response.status_code == 400
    assert re.fullmatch(
        r"bomb.png is more than \d+ pixels, over the limit of 40000000 pixels.",
        response.get_json()["error"],
    )
    response = upload(offline_app, encoded_images(sample_images(1))[0])
    assert response.status_code == 502  # within the budget: sent to the (absent) model


def test_an_id_holding_a_newline_is_reachable_through_the_api(offline_app):
    answer = offline_app.get("/api/items/blobs/line%0Abreak.png").get_json()
    assert answer["id"] == "blobs/line\nbreak.png" and answer["class"] == "blobs"
    assert [r["id"] for r in answer["results"]] == ["blobs/line\nbreak.png", "blobs/00.png"]
    assert answer["thumbnail"] == "/thumbnails/blobs/line%0Abreak.png"
    thumbnail = offline_app.get(answer["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.data[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_lists_the_collection(api):
    page = api.get("/").get_data(as_text=True)
    assert "Search 24 images" in page
    assert page.count('<img src="/thumbnails/') == 24


def test_the_app_refuses_an_index_of_another_code_length(grpc_server, tmp_path):
    codes = np.where(np.random.default_rng(0).random((10, 32)) < 0.5, -1, 1).astype(np.int8)
    index_file = tmp_path / "long.faiss"
    HammingIndex.build(np.packbits(codes > 0, axis=1), [str(i) for i in range(10)]).save(index_file)
    command = ["--index", str(index_file), "--server", grpc_server, "--images", str(tmp_path)]
    with pytest.raises(SystemExit, match="gives 16-bit codes but .* holds 32-bit codes"):
        app_main(command)


class AppProcess:
    """`python -m serving.app` as a child process; `url` once it prints its ready line."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "serving.app", "--port", "0", *args]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        for line in self.process.stdout:
            self.lines.append(line)
            if match := READY.search(line):
                self.url = match["url"]
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return
        raise RuntimeError(f"serving.app exited ({self.process.wait()}):\n{''.join(self.lines)}")

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(30)


def chromium(download_dir: Path):
    """Headless Chromium through Selenium and Debian's chromedriver, or a skip off CI."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium and chromium-driver (Debian packages)")
        pytest.skip("chromium and chromium-driver (Debian packages) are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={download_dir / 'profile'}",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def test_a_browser_uploads_an_image_and_sees_k_result_thumbnails(grpc_server, collection, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder, index_file, _ = collection
    query = tmp_path / "query.png"  # a 28×28 grayscale PNG, as Fashion-MNIST's
    query.write_bytes((folder / "blobs" / "03.png").read_bytes())
    app = AppProcess(
        "--index", str(index_file), "--server", grpc_server, "--images", str(folder), "--top-k", "6"
    )
    browser = chromium(tmp_path)
    try:
        browser.get(app.url)
        assert "Search 24 images" in browser.find_element(By.TAG_NAME, "h1").text
        browser.find_element(By.ID, "file").send_keys(str(query))

        def loaded_results(driver):
            images = driver.find_elements(By.CSS_SELECTOR, "#results figure.result img")
            loaded = [
                image
                for image in images
                if driver.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0", image
                )
            ]
            return images if len(images) == 6 and len(loaded) == 6 else False

        images = WebDriverWait(browser, 60).until(loaded_results)
        captions = [
            figure.text for figure in browser.find_elements(By.CSS_SELECTOR, "figure.result")
        ]
        assert captions[0].splitlines()[:2] == ["d = 0", "blobs/03.png"]
        assert all(
            image.get_attribute("src").startswith(app.url + "thumbnails/") for image in images
        )

        browser.find_element(By.CSS_SELECTOR, '#examples img[data-id="specks/00.png"]').click()
        WebDriverWait(browser, 60).until(
            lambda driver: (
                "specks/00.png" in driver.find_element(By.ID, "query").text
                and len(driver.find_elements(By.CSS_SELECTOR, "#results .same, #results .other"))
                == 6
            )
        )
        screenshot = tmp_path / "search_page.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.quit()
        app.stop()
