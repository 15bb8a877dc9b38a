"""Drives zoo serve's page in headless Chromium (Playwright) the way a person would, and prints
what the page showed as one JSON object; tests/serve_page.rs compares it with `zoo run --json`.

usage: page.py BASE_URL API_KEY SCREENSHOT_DIR PHOTO NOT_A_PHOTO AUDIO TEXT
"""

import hashlib
import json
import os
import sys

from playwright.sync_api import sync_playwright

BASE, KEY, SHOTS, PHOTO, NOT_A_PHOTO, AUDIO, TEXT = sys.argv[1:8]
TIMEOUT_MS = int(os.environ.get("ZOO_PAGE_TIMEOUT_MS", "240000"))
os.makedirs(SHOTS, exist_ok=True)
out = {}


def downloaded(page, selector):
    """Clicks a download link; returns the file's sha256 and the name the page gave it."""
    with page.expect_download() as download:
        page.click(selector)
    with open(download.value.path(), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), download.value.suggested_filename


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def open_task(page, task):
    page.goto(f"{BASE}/?task={task}")
    page.wait_for_selector(f"#task-{task}:not([hidden])")


with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=os.environ.get("ZOO_CHROMIUM", "/usr/bin/chromium"),
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # A fake microphone (a beep) that needs no permission prompt, for the recorder.
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
        ],
    )
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    console_errors = []
    page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.set_default_timeout(TIMEOUT_MS)

    try:
        # Without the key the page says so and opens the key field; with it, the task picker lists
        # every served task, each with its own address.
        page.goto(BASE + "/")
        page.wait_for_selector("#main .error")
        out["without_key"] = page.text_content("#main .error")
        out["key_box_opened"] = page.eval_on_selector("#key-box", "d => d.open")
        page.fill("#api-key", KEY)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("nav#tasks a")
        out["stored_key"] = page.evaluate("() => localStorage.getItem('zoo-api-key')")
        out["tasks"] = page.eval_on_selector_all("nav#tasks a", "links => links.map(a => a.dataset.task)")
        out["first_shown"] = page.eval_on_selector("nav#tasks a[aria-current=page]", "a => a.dataset.task")

        # Image classification, explained; then a text file as a photo, then a photo again.
        open_task(page, "image-classification")
        panel = "#task-image-classification"
        page.set_input_files(f"{panel} input[type=file]", PHOTO)
        page.wait_for_selector(f"{panel} ol.labels li")
        page.wait_for_selector(f"{panel} canvas.heat:not([hidden])")
        out["image_labels"] = page.eval_on_selector_all(f"{panel} ol.labels .name", "e => e.map(x => x.textContent)")
        out["image_percents"] = page.eval_on_selector_all(f"{panel} ol.labels .pct", "e => e.map(x => x.textContent)")
        out["heat"] = page.eval_on_selector(
            f"{panel} canvas.heat",
            """c => { const b = c.getBoundingClientRect(), img = c.parentElement.querySelector('img').getBoundingClientRect();
                      return {cells: [c.width, c.height], label: c.dataset.label, opacity: Number(c.style.opacity),
                              covers: [b.width / img.width, b.height / img.height]}; }""",
        )
        page.fill("#ic-opacity", "0.3")
        page.dispatch_event("#ic-opacity", "input")
        out["heat_opacity_after_slider"] = page.eval_on_selector(f"{panel} canvas.heat", "c => Number(c.style.opacity)")
        page.fill("#ic-opacity", "0.6")
        page.dispatch_event("#ic-opacity", "input")
        shot(page, "image-classification")
        page.set_input_files(f"{panel} input[type=file]", NOT_A_PHOTO)
        page.wait_for_selector(f"{panel} .error")
        out["image_error"] = page.text_content(f"{panel} .error")
        out["labels_kept_after_error"] = page.eval_on_selector_all(f"{panel} ol.labels .name", "e => e.length")
        shot(page, "image-classification-error")
        page.set_input_files(f"{panel} input[type=file]", PHOTO)
        page.wait_for_selector(f"{panel} .error", state="detached")
        page.wait_for_selector(f"{panel} ol.labels li")
        out["image_labels_again"] = page.eval_on_selector_all(f"{panel} ol.labels .name", "e => e.map(x => x.textContent)")

        # Fake news, typed, explained.
        open_task(page, "fake-news")
        panel = "#task-fake-news"
        page.fill("#fn-text", TEXT)
        page.click("#fn-run")
        page.wait_for_selector("#fn-label")
        out["fake_news_label"] = page.text_content("#fn-label")
        out["fake_news_percents"] = page.eval_on_selector_all(f"{panel} ol.labels li", "e => e.map(x => x.textContent)")
        page.wait_for_selector("#fn-shaded span[data-score]")
        out["shaded_text"] = page.text_content("#fn-shaded")
        out["shaded_words"] = page.eval_on_selector_all(
            "#fn-shaded span[data-score]",
            "e => e.map(x => ({text: x.textContent, score: Number(x.dataset.score), shaded: getComputedStyle(x).backgroundColor}))",
        )
        shot(page, "fake-news")

        # Speech: a file, explained; a word click seeks; the SRT download; then the microphone.
        open_task(page, "speech-recognition")
        panel = "#task-speech-recognition"
        page.set_input_files(f"{panel} input[type=file]", AUDIO)
        page.wait_for_selector(f"{panel} .transcript .segment")
        out["transcript"] = page.get_attribute(f"{panel} .transcript", "data-text")
        out["segment_times"] = page.eval_on_selector_all(f"{panel} .transcript button.time", "e => e.map(x => x.textContent)")
        out["low_words"] = page.eval_on_selector_all(f"{panel} button.word.low", "e => e.map(x => x.textContent)")
        words = page.query_selector_all(f"{panel} button.word")
        target = words[len(words) // 2]
        out["clicked_word_start"] = float(target.get_attribute("data-start"))
        target.click()
        out["audio_time_after_click"] = page.eval_on_selector(f"{panel} audio", "a => a.currentTime")
        shot(page, "speech-recognition")
        with page.expect_download() as download:
            page.click("#asr-srt")
        path = download.value.path()
        with open(path, encoding="utf-8") as f:
            out["srt"] = f.read()
        out["srt_name"] = download.value.suggested_filename
        page.click("#asr-record")
        page.wait_for_selector("#asr-record[aria-pressed=true]")
        page.wait_for_timeout(2500)
        page.click("#asr-record")
        page.wait_for_function(
            "() => document.querySelector('#task-speech-recognition .transcript').dataset.text !== undefined"
            " && !document.querySelector('#task-speech-recognition .progress')"
        )
        out["recording_error"] = page.eval_on_selector_all(f"{panel} .error", "e => e.map(x => x.textContent)")
        out["recording_note"] = page.eval_on_selector_all(f"{panel} .transcript .note", "e => e.map(x => x.textContent)")

        # Style transfer: the sheet's cells as the picker, style 3, before and after, the download.
        open_task(page, "style-transfer")
        panel = "#task-style-transfer"
        page.set_input_files(f"{panel} input[type=file] >> nth=0", PHOTO)
        page.wait_for_selector(f"{panel} .styles button img")
        out["style_buttons"] = page.eval_on_selector_all(f"{panel} .styles button", "e => e.map(x => x.textContent)")
        page.click(f"{panel} .styles button[data-index='3']")
        page.click("#st-run")
        page.wait_for_selector("#st-after-figure:not([hidden])")
        out["styled_size"] = page.eval_on_selector("#st-after", "i => [i.naturalWidth, i.naturalHeight]")
        out["styled_sha256"], out["download_name"] = downloaded(page, "#st-download")
        shot(page, "style-transfer")
        # The style of a painting (the same photo as its own painting, at strength 0.5).
        page.check(f"{panel} input[name=st-mode][value=picture]")
        page.set_input_files(f"{panel} input[type=file] >> nth=1", PHOTO)
        page.fill("#st-strength", "0.5")
        page.dispatch_event("#st-strength", "input")
        before = page.get_attribute("#st-after", "src")
        page.click("#st-run")
        page.wait_for_function(f"() => document.querySelector('#st-after').src !== {json.dumps(before)}")
        page.wait_for_selector(f"{panel} .progress", state="detached")
        out["painted_sha256"], _ = downloaded(page, "#st-download")

        # On a phone: the same panel, nothing wider than the screen.
        page.set_viewport_size({"width": 390, "height": 844})
        open_task(page, "image-classification")
        page.set_input_files("#task-image-classification input[type=file]", PHOTO)
        page.wait_for_selector("#task-image-classification canvas.heat:not([hidden])")
        out["phone_overflow"] = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        shot(page, "phone-image-classification")
    except Exception:
        # What the page showed when it went wrong, for the test's failure message.
        shot(page, "failure")
        print("page text at failure:\n" + page.inner_text("body")[:3000], file=sys.stderr)
        print("console errors: " + json.dumps(console_errors), file=sys.stderr)
        raise
    out["requested"] = sorted(set(requested))
    out["console_errors"] = console_errors
    browser.close()

print(json.dumps(out))
