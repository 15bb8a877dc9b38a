"""The Python package against what `zoo run --json` prints for the same inputs.

Run by tests/python_package.rs, which sets ZOO_BIN (the zoo binary), ZOO_SHARED_ASSETS and a
Hugging Face cache in HF_HUB_CACHE; every test needs them, so none is skipped when they are set.
"""

import json
import os
import pathlib
import pickle
import subprocess
import threading
import wave

import numpy as np
import pytest
from PIL import Image

import zoo

REPO = pathlib.Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data"
ZOO = os.environ["ZOO_BIN"]
ASSETS = pathlib.Path(os.environ["ZOO_SHARED_ASSETS"])
JFK = ASSETS / "data" / "speech" / "audio" / "jfk.wav"
CLAIM = "Drinking hot water every fifteen minutes kills the coronavirus, says a viral message."


def cli(*args):
    """`zoo run ARGS --json`: one dict per input."""
    run = subprocess.run([ZOO, "run", *args, "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def cli_error(*args):
    run = subprocess.run([ZOO, "run", *args], capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    return run.stderr.strip().splitlines()[-1].removeprefix("zoo: error: ")


def without_input(result):
    return {k: v for k, v in result.items() if k != "input"}


@pytest.fixture(scope="module")
def classify():
    return zoo.pipeline("image-classification", top_k=3)


def test_image_classification_is_the_clis(classify):
    photos = [str(DATA / "chelsea.png"), str(DATA / "coffee.png")]
    assert classify(photos) == cli("image-classification", *photos, "--top-k", "3")
    assert classify(photos[0]) == cli("image-classification", photos[0], "--top-k", "3")[0]
    explained = zoo.pipeline("classify", explain=True)(photos[0])
    assert explained == cli("image-classification", photos[0], "--explain")[0]


def test_object_detection_is_the_clis():
    photo = str(DATA / "coffee.png")
    detect = zoo.pipeline("detect", min_score=0.3, classes="cup,bowl")
    expected = cli("object-detection", photo, "--min-score", "0.3", "--classes", "cup,bowl")[0]
    assert len(expected["objects"]) >= 2
    assert detect(photo) == expected


def test_face_recognition_is_the_clis():
    photo = str(DATA / "astronaut.jpg")
    faces = zoo.pipeline("faces", descriptors=True)
    expected = cli("face-recognition", photo, "--descriptors")[0]
    assert len(expected["faces"]) == 1 and len(expected["faces"][0]["landmarks"]) == 68
    assert faces(photo) == expected
    # A list is one run: --compare measures each picture against the first (the detector takes
    # the cat's face for a face, and it is nobody the astronaut is).
    cat = str(DATA / "chelsea.png")
    compared = zoo.pipeline("faces", compare=True)([photo, cat])
    assert compared == cli("face-recognition", photo, cat, "--compare")
    assert compared[1]["comparison"]["same_person"] is False
    assert compared[1]["comparison"]["distance"] > 0.6


def test_arrays_pil_images_and_bytes_are_the_files_pixels(classify):
    path = DATA / "chelsea.png"
    expected = classify(str(path))["predictions"]
    picture = Image.open(path)
    assert classify(picture)["predictions"] == expected
    assert classify(np.asarray(picture.convert("RGB")))["predictions"] == expected
    assert classify(path.read_bytes())["predictions"] == expected
    assert classify(path)["predictions"] == expected, "a pathlib.Path is a path"
    with pytest.raises(ValueError, match="uint8, H x W x 3"):
        classify(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="not an input of this task"):
        classify(3.5)


def test_fake_news_is_the_clis():
    check = zoo.pipeline("fake-news", explain=True)
    expected = cli("fake-news", "--text", CLAIM, "--explain")[0]
    got = check(CLAIM)
    assert without_input(got) == without_input(expected)
    assert got["input"] == "inputs[0]"
    assert [r["label"] for r in check([CLAIM, "The WHO published its weekly situation report today."])] == [
        cli("fake-news", "--text", text)[0]["label"] for text in (CLAIM, "The WHO published its weekly situation report today.")
    ]


def test_speech_from_a_file_and_from_samples_is_the_clis():
    asr = zoo.pipeline("asr", explain=True)
    expected = cli("speech-recognition", str(JFK), "--explain")[0]
    assert asr(str(JFK)) == expected
    with wave.open(str(JFK)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    assert without_input(asr(samples)) == without_input(expected)


def test_speech_with_vad_is_the_clis():
    goforward = ASSETS / "data" / "speech" / "audio" / "goforward.wav"
    expected = cli("speech-recognition", str(goforward), "--vad")[0]
    got = zoo.pipeline("asr", vad=True)(str(goforward))
    assert got == expected
    assert got["speech"] == [[0.112, 2.786]]


def test_speech_in_batched_pieces_is_the_clis():
    # jfk's pauses over 160 ms cut its speech into ranges, which the batched path packs into one piece.
    expected = cli("speech-recognition", str(JFK), "--batch-size", "4")[0]
    got = zoo.pipeline("asr", batch_size=4)(str(JFK))
    assert got == expected
    assert len(got["speech"]) > 1 and len(got["segments"]) == 1


def test_style_transfer_gives_the_clis_picture(tmp_path):
    written = tmp_path / "styled.png"
    cli("style-transfer", str(DATA / "coffee.png"), "--style", "3", "--output", str(written))
    styled = zoo.pipeline("style-transfer", style=3)(str(DATA / "coffee.png"))
    assert isinstance(styled, Image.Image)
    assert np.array_equal(np.asarray(styled), np.asarray(Image.open(written)))
    # A painting's style from a PIL image: uploaded as the picture's pixels.
    painted = tmp_path / "painted.png"
    cli("style-transfer", str(DATA / "coffee.png"), "--style-image", str(DATA / "chelsea.png"), "--output", str(painted))
    from_picture = zoo.pipeline("style-transfer", style_image=Image.open(DATA / "chelsea.png"))(str(DATA / "coffee.png"))
    from_path = zoo.pipeline("style-transfer", style_image=str(DATA / "chelsea.png"))(str(DATA / "coffee.png"))
    assert np.array_equal(np.asarray(from_path), np.asarray(Image.open(painted)))
    assert np.array_equal(np.asarray(from_picture), np.asarray(Image.open(painted)))


def test_errors_carry_the_clis_line(classify, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list\n")
    with pytest.raises(zoo.ZooError) as raised:
        classify(str(notes))
    assert str(raised.value) == cli_error("image-classification", str(notes))
    assert isinstance(raised.value, RuntimeError)
    both = classify([str(notes), str(DATA / "coffee.png")], errors="return")
    assert both[0]["error"] == str(raised.value) and both[0]["input"] == str(notes)
    assert both[1]["predictions"][0]["label"] == "espresso"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        zoo.pipeline("nope")
    with pytest.raises(ValueError, match="unknown option 'topk'"):
        zoo.pipeline("image-classification", topk=3)
    with pytest.raises(ValueError, match="top-k"):
        zoo.pipeline("image-classification", top_k="many")
    with pytest.raises(ValueError, match="errors must be"):
        classify(str(notes), errors="ignore")


def test_one_pipeline_serves_several_threads(classify):
    photos = [str(DATA / "chelsea.png"), str(DATA / "coffee.png")] * 3
    serial = [classify(p) for p in photos]
    results = [None] * len(photos)

    def work(i):
        results[i] = classify(photos[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(photos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == serial


def test_a_pipeline_pickles_as_its_recipe(classify):
    copy = pickle.loads(pickle.dumps(classify))
    assert (copy.task, copy.model) == (classify.task, classify.model)
    assert copy(str(DATA / "coffee.png")) == classify(str(DATA / "coffee.png"))


def test_tasks_and_models_are_the_clis():
    listed = subprocess.run([ZOO, "list", "--json"], capture_output=True, text=True, check=True).stdout
    assert zoo.models() == [json.loads(line) for line in listed.splitlines()]
    assert [m["model"] for m in zoo.models("style-transfer")] == ["multistyle26", "magenta-arbitrary"]
    names = [t["task"] for t in zoo.tasks()]
    assert names == [
        "image-classification",
        "fake-news",
        "style-transfer",
        "speech-recognition",
        "object-detection",
        "face-recognition",
    ]
    assert zoo.__version__ == subprocess.run([ZOO, "--version"], capture_output=True, text=True).stdout.split()[-1]
