"""The search page over a video index, in headless Chromium (issue 21): German and French demo
queries typed into the page show the Python API's top-k as playable clips, the first `<video>`
loads (readyState reaches HAVE_CURRENT_DATA) with the file's duration and plays under the pointer,
the right clip is first for most queries, clicking a clip shows "more like this" (the clip first),
and the server serves copies of the indexed clips, never the files themselves.

The index: a small demo *video feature* run (`trainer/configs/demo_video.yaml`, shrunk: frame
features with a temporal layer, trained here in about a minute of CPU) whose test gallery is indexed
with one ``.mp4`` per item (the world's rendered frames, `--pictures`), so the page plays the demo's
clips while the model reads their features (a pixel video model is the video processor's recipe,
too slow for every CI run). ``$CL2CM_DEMO_VIDEO_RUN`` (a run folder) skips the training. A
screenshot is saved (to $CL2CM_SCREENSHOT when set).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="gradio is not installed (pip install 'cl2cm-hf[app]')")
pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'cl2cm-hf[dev]')")
pytest.importorskip("av", reason="PyAV is not installed (pip install 'cl2cm-hf[video]')")

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_search_page import (
    CHROMEDRIVER,
    CHROMIUM,
    REPO,
    TOP_K,
    demo_world_of,
    http_get,
    open_page,
    served_page,
    shown_ids,
    type_query,
    wait_for_results,
)

sys.path.insert(0, str(Path(__file__).parent / "search"))
from videos import write_demo_clips

from cl2cm_hf.search.decode_video import probe_video

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)",
)]

# demo_video.yaml shrunk for CI: both stages in ~1 min of CPU on 2 cores.
FAST_VIDEO = [
    "--demo_items", "600", "--demo_validation_items", "50", "--demo_test_items", "60", "--cl_num_train_epochs", "1",
    "--num_train_epochs", "5", "--per_device_train_batch_size", "32", "--learning_rate", "0.002",
    "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    "--query", "null", "--report_to", "none", "--dataloader_num_workers", "0",
]


@pytest.fixture(scope="module")
def video_index(tmp_path_factory):
    """(index folder, the world's test queries): the run's test gallery with one mp4 clip per item."""
    from cl2cm_hf.data import open_visual_store
    from cl2cm_hf.search import build_index

    root = tmp_path_factory.mktemp("video_page")
    run = Path(os.environ["CL2CM_DEMO_VIDEO_RUN"]) if os.environ.get("CL2CM_DEMO_VIDEO_RUN") else root / "run"
    if not os.environ.get("CL2CM_DEMO_VIDEO_RUN"):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
        done = subprocess.run([sys.executable, str(REPO / "trainer" / "run.py"), str(REPO / "trainer" / "configs" / "demo_video.yaml"),
                               "--output_dir", str(run), *FAST_VIDEO], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    final = run / "cross_modal"
    world = demo_world_of(final)
    write_demo_clips(world, open_visual_store(final / "test_gallery").ids, root / "clips")
    build_index(final, root / "index", features=final / "test_gallery", pictures=root / "clips", faiss="none",
                num_workers=0, progress=False, query_encoder=False)
    return root / "index", scene_queries(world)


def scene_queries(world, langs=("de", "fr"), per_lang: int = 5) -> list[tuple[str, str, str]]:
    """(lang, text, visual id): for the first test scenes of each language, the scene's longest
    caption. A video caption may name one object of several ("a blue boat"), which many clips show;
    the longest names most of the scene, so its own clip first is a fair expectation."""
    longest: dict[tuple[str, str], str] = {}
    for row in world.queries["test"]:
        key = (row["lang"], row["visual_id"])
        if row["lang"] in langs and len(row["text"]) > len(longest.get(key, "")):
            longest[key] = row["text"]
    picked = []
    for lang in langs:
        picked += [(lang, text, visual_id) for (code, visual_id), text in longest.items() if code == lang][:per_lang]
    return picked


@pytest.fixture(scope="module")
def index(video_index):
    from cl2cm_hf.search import SearchIndex

    return SearchIndex.load(video_index[0])


@pytest.fixture(scope="module")
def page(video_index, tmp_path_factory):
    """(driver, url): headless Chromium on the page served over the video index."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1200,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    with served_page(video_index[0], tmp_path_factory.mktemp("server")) as url:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            open_page(driver, url)
            yield driver, url
        finally:
            driver.quit()


def first_clip(driver) -> dict:
    return driver.execute_script(
        "const v = document.querySelector('#results video');"
        "return v ? {ready: v.readyState, duration: v.duration, paused: v.paused, src: v.src} : null;")


def test_typed_queries_show_the_api_top_k_as_playable_clips(page, index, video_index, tmp_path):
    driver, _ = page
    queries = video_index[1]
    assert {lang for lang, _, _ in queries} == {"de", "fr"}, queries
    right = []
    for lang, text, visual_id in queries:
        hits = index.search(text, top_k=TOP_K)
        type_query(driver, text)
        wait_for_results(driver, [hit.id for hit in hits], f"{lang} query {text!r}")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#results video")) == TOP_K
        right.append(hits[0].id == visual_id)
        # The first clip loads with the duration of its file (its first frame is the poster) ...
        WebDriverWait(driver, 30).until(lambda d: (first_clip(d) or {}).get("ready", 0) >= 2)  # HAVE_CURRENT_DATA
        assert first_clip(driver)["duration"] == pytest.approx(probe_video(hits[0].path).seconds, abs=0.01)
    # ... and plays while the pointer is on it.
    ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, "#results video")).perform()
    WebDriverWait(driver, 10).until(lambda d: not first_clip(d)["paused"])
    shot = Path(os.environ.get("CL2CM_SCREENSHOT") or tmp_path / "search_page_video.png")
    assert driver.save_screenshot(str(shot))
    print(f"top-1 right for {sum(right)} of {len(right)} typed queries")
    assert sum(right) > len(right) / 2, list(zip(queries, right))


def test_click_a_clip_for_more_like_this(page, index, video_index):
    driver, _ = page
    text = video_index[1][0][1]
    type_query(driver, text)
    shown = wait_for_results(driver, [hit.id for hit in index.search(text, top_k=TOP_K)], text)
    want = [hit.id for hit in index.search_item(shown[2], top_k=TOP_K)]
    assert want[0] == shown[2]
    driver.find_elements(By.CSS_SELECTOR, "#results .thumbnail-item")[2].click()
    wait_for_results(driver, want, f"click on clip 3 ({shown[2]})")


def test_the_server_serves_copies_of_the_clips_only(page, index, video_index):
    driver, url = page
    text = video_index[1][-1][1]
    type_query(driver, text)
    wait_for_results(driver, [hit.id for hit in index.search(text, top_k=TOP_K)], text)
    shown = [index.paths[index.ids.index(i)] for i in shown_ids(driver)]
    for path in [*shown, str(video_index[0] / "metadata.json")]:
        status, body = http_get(f"{url}gradio_api/file={path}")
        assert status != 200 and b"ftyp" not in body[:64], (path, status)
    for src in driver.execute_script("return Array.from(document.querySelectorAll('#results video')).map(v => v.src);"):
        status, body = http_get(src)
        assert status == 200 and body[4:8] == b"ftyp", src  # an MP4 file, served from Gradio's own copy
