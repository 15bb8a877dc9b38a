"""Talks to a running `zoo serve` through the official clients, unchanged: OpenAI's `openai`
package (audio transcriptions) and Triton's `tritonclient[http]` (the Open Inference Protocol,
binary tensors as it sends them by default). Prints one JSON object of what each answered, for
tests/serve_clients.rs to compare with `zoo run`.

    python clients.py http://127.0.0.1:PORT AUDIO.wav IMAGE.png "a text"
"""

import json
import sys

import numpy as np
import openai
import tritonclient.http as triton


def main() -> None:
    base, audio, image, text = sys.argv[1:5]
    out = {}

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    with open(audio, "rb") as f:
        out["openai_json"] = client.audio.transcriptions.create(model="whisper-1", file=f).text
    with open(audio, "rb") as f:
        verbose = client.audio.transcriptions.create(
            model="faster-whisper-tiny.en", file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
        out["openai_verbose"] = {
            "text": verbose.text,
            "segments": len(verbose.segments or []),
            "words": [w.word for w in (verbose.words or [])],
        }
    with open(audio, "rb") as f:
        out["openai_srt"] = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    try:
        with open(audio, "rb") as f:
            client.audio.transcriptions.create(model="whisper-9", file=f)
        out["openai_unknown_model"] = "no error"
    except openai.NotFoundError as e:
        out["openai_unknown_model"] = e.status_code

    host = base.removeprefix("http://")
    triton_client = triton.InferenceServerClient(url=host)
    out["triton_live"] = triton_client.is_server_live()
    out["triton_ready"] = triton_client.is_model_ready("fake-news")
    out["triton_metadata_outputs"] = [o["name"] for o in triton_client.get_model_metadata("fake-news")["outputs"]]

    texts = np.array([text.encode(), b"The WHO published its weekly situation report today."], dtype=np.object_)
    tensor = triton.InferInput("input", [2], "BYTES")
    tensor.set_data_from_numpy(texts)
    wanted = [triton.InferRequestedOutput(name) for name in ("label", "score", "json")]
    result = triton_client.infer("fake-news", [tensor], outputs=wanted)
    out["triton_text"] = {
        "label": [x.decode() for x in result.as_numpy("label")],
        "score": [float(x) for x in result.as_numpy("score")],
        "json": [json.loads(x) for x in result.as_numpy("json")],
    }

    with open(image, "rb") as f:
        picture = np.array([f.read()], dtype=np.object_)
    tensor = triton.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(picture)
    result = triton_client.infer("image-classification", [tensor])  # every output, in JSON
    out["triton_image"] = {
        "label": [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")],
        "json": [json.loads(x) for x in result.as_numpy("json")],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
