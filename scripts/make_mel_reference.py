"""Writes tests/data/speech/mel_reference.safetensors: Whisper's 80-bin Slaney filterbank and the
log-mel spectrogram of the first 4 s of jfk.wav, both computed by faster-whisper's numpy feature
extractor (an implementation independent of zoo's), with the audio padded by 30 s of zeros as
OpenAI's transcribe() does.

Run: /tmp/bench-venv/bin/python scripts/make_mel_reference.py ../shared/assets/data/speech/audio/jfk.wav
"""
import sys
import wave

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from safetensors.numpy import save_file

FRAMES = 400

with wave.open(sys.argv[1]) as w:
    assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
    pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0

fe = FeatureExtractor(feature_size=80)
mel = fe(pcm, padding=16000 * 30)
save_file(
    {
        "filters": np.ascontiguousarray(fe.mel_filters.astype(np.float32)),
        "jfk_log_mel": np.ascontiguousarray(mel[:, :FRAMES].astype(np.float32)),
        "jfk_frames": np.array([mel.shape[1]], dtype=np.int64),
    },
    sys.argv[2] if len(sys.argv) > 2 else "tests/data/speech/mel_reference.safetensors",
)
print(mel.shape, fe.mel_filters.shape, float(mel.max()), float(mel.min()))
