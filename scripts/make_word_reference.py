"""Writes tests/data/speech/jfk_words.faster-whisper.json: faster-whisper's word timestamps and
probabilities for jfk.wav (tiny.en, greedy, temperature 0), an independent reference for zoo's
word alignment.

Run (after `eval "$(../shared/bin/test-assets --env)"`):
  /tmp/bench-venv/bin/python scripts/make_word_reference.py ../shared/assets/data/speech/audio/jfk.wav
"""
import glob
import json
import os
import sys

import faster_whisper
from faster_whisper import WhisperModel

model_dir = glob.glob(os.path.join(os.environ["HF_HUB_CACHE"], "models--Systran--faster-whisper-tiny.en/snapshots/*"))[0]
model = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=2)
segments, _ = model.transcribe(sys.argv[1], beam_size=1, temperature=0.0, word_timestamps=True, vad_filter=False)
out = {
    "producer": f"faster-whisper {faster_whisper.__version__}, tiny.en, beam 1, temperature 0, word_timestamps=True",
    "segments": [
        {"start": s.start, "end": s.end, "words": [
            {"text": w.word.strip(), "start": w.start, "end": w.end, "probability": w.probability} for w in s.words]}
        for s in segments
    ],
}
with open("tests/data/speech/jfk_words.faster-whisper.json", "w") as f:
    json.dump(out, f, indent=1)
