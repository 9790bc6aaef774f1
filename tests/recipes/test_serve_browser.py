"""The page of `hart-unified serve` in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright's
Python package; .ci/run installs both): a prompt typed in, previews arriving scale by scale before the
final image, the model's caption of it, the session's gallery, and an uploaded image captioned."""

import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI") == "true"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
MIN_PREVIEWS = 3  # distinct preview frames seen before the final image

# records, in order, every image that gets a picture: previews appended with theirs, the final one's src set
OBSERVER = """() => {
  window.__seen = [];
  const note = (img) => { if (img.src) window.__seen.push({id: img.id, cls: img.className, src: img.src}); };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes" && r.target.tagName === "IMG") note(r.target);
      for (const n of r.addedNodes || []) if (n.tagName === "IMG") note(n);
    }
  }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ["src"]});
}"""


def _need(what: str, present: bool) -> None:
    if not present:
        if IN_CI:
            pytest.fail(f"{what} is missing in CI (.ci/run installs it)")
        pytest.skip(f"{what} is not installed (apt-get install chromium; pip install -e '.[serve]')")


@pytest.fixture(scope="module")
def server_url():
    _need("uvicorn (the serve extra)", _importable("uvicorn") and _importable("fastapi"))
    import uvicorn

    from recipes.cli import DEFAULT_MODEL
    from recipes.serve.app import create_app
    from unified import UnifiedModel

    app = create_app(UnifiedModel.from_pretrained(DEFAULT_MODEL).eval(), name="shapes")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def browser():
    _need(str(CHROMIUM), CHROMIUM.exists())
    _need("playwright (Python package)", _importable("playwright"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def test_page_streams_previews_then_image_and_caption(server_url, browser, tmp_path):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server_url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('shapes')")
    page.evaluate(OBSERVER)
    page.fill("#prompt", "a red circle in the top left")
    page.fill("#seed", "3")
    page.click("#draw-button")
    page.wait_for_function("document.getElementById('caption').textContent.trim().length > 0", timeout=60_000)

    seen = page.evaluate("window.__seen")
    first_final = next(i for i, s in enumerate(seen) if s["id"] == "final")
    previews = [s["src"] for s in seen[:first_final] if "preview" in s["cls"]]
    assert len(set(previews)) >= MIN_PREVIEWS, seen
    assert all(s["src"].startswith("data:image/png;base64,") for s in seen)
    assert page.locator("#previews img").count() == len(previews)
    caption = page.inner_text("#caption")
    assert caption.strip() and "error" not in page.get_attribute("#draw-status", "class")
    assert page.locator("#gallery figure").count() == 1 and caption in page.inner_text("#gallery")

    # an upload, captioned
    image = tmp_path / "blue.png"
    Image.new("RGB", (48, 48), (40, 60, 220)).save(image)
    page.set_input_files("#upload", str(image))
    page.click("#upload-button")
    page.wait_for_function("!document.getElementById('upload-answer').textContent.endsWith('\u2026') && "
                           "document.getElementById('upload-answer').textContent.length > 0", timeout=60_000)
    assert "error" not in page.get_attribute("#upload-answer", "class")
    # a file that is no image: the page shows the server's one-line error, and still works
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    page.set_input_files("#upload", str(junk))
    page.click("#upload-button")
    page.wait_for_function("document.getElementById('upload-answer').classList.contains('error')", timeout=60_000)
    assert "not an image" in page.inner_text("#upload-answer")
    assert not errors, errors
