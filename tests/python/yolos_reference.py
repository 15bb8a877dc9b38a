"""An independent YOLOS (Transformers' YolosForObjectDetection) in plain numpy, for tests/detection.rs:
written from transformers' modeling_yolos.py and image_processing_yolos.py, not from zoo's code.

usage: python yolos_reference.py MODEL_DIR PICTURE.rgb WIDTH HEIGHT THRESHOLD
Reads config.json, preprocessor_config.json and model.safetensors; the picture is raw RGB bytes
already at the processor's output size (checked, so no resize is involved). Prints the objects
post_process_object_detection keeps, as JSON: [{"label", "index", "score", "box": [x, y, w, h]}].
"""
import json
import math
import sys

import numpy as np


def safetensors(path):
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], "<f4").reshape(info["shape"]).astype(np.float64)
    return out


def cubic_weights(t, a=-0.75):
    # Keys' cubic convolution at distances 1 + t, t, 1 - t, 2 - t (torch's upsample_bicubic2d).
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic(grid, out_h, out_w):
    """torch.nn.functional.interpolate(mode="bicubic", align_corners=False) of (C, H, W)."""
    _, h, w = grid.shape

    def matrix(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            src = (o + 0.5) * n_in / n_out - 0.5
            f = math.floor(src)
            for k, wt in zip(range(-1, 3), cubic_weights(src - f)):
                m[o, min(max(f + k, 0), n_in - 1)] += wt
        return m

    rows, cols = matrix(h, out_h), matrix(w, out_w)
    return np.einsum("oh,chw,pw->cop", rows, grid, cols)


def interpolate(pos, cfg, grid_h, grid_w):
    tokens = cfg["num_detection_tokens"]
    th, tw = cfg["image_size"][0] // cfg["patch_size"], cfg["image_size"][1] // cfg["patch_size"]
    cls, det, patches = pos[:1], pos[-tokens:], pos[1:-tokens]
    grid = patches.T.reshape(-1, th, tw)
    resized = bicubic(grid, grid_h, grid_w).reshape(grid.shape[0], -1).T
    return np.concatenate([cls, resized, det])


def output_size(height, width, size, max_size):
    """image_processing_yolos.get_size_with_aspect_ratio."""
    small, large = float(min(height, width)), float(max(height, width))
    if large / small * size > max_size:
        size = int(round(max_size * small / large))
    if width < height and width != size:
        height, width = int(size * height / width), size
    elif height < width and height != size:
        height, width = size, int(size * width / height)
    return height - height % 16, width - width % 16


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


erf = np.vectorize(math.erf)


def linear(x, t, p):
    return x @ t[p + ".weight"].T + t[p + ".bias"]


def main():
    model, picture, width, height, threshold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    cfg = json.load(open(f"{model}/config.json"))
    proc = json.load(open(f"{model}/preprocessor_config.json"))
    t = safetensors(f"{model}/model.safetensors")
    edges = proc["size"]
    want = output_size(height, width, edges["shortest_edge"], edges["longest_edge"])
    assert want == (height, width), f"the picture must be at the processor's size {want}"
    rgb = np.frombuffer(open(picture, "rb").read(), np.uint8).reshape(height, width, 3).astype(np.float64)
    x = (rgb / 255 - np.array(proc["image_mean"])) / np.array(proc["image_std"])
    p, hidden, heads = cfg["patch_size"], cfg["hidden_size"], cfg["num_attention_heads"]
    gh, gw = height // p, width // p
    # The patch convolution: each patch flattened (C, ky, kx) times the kernel.
    conv = t["vit.embeddings.patch_embeddings.projection.weight"].reshape(hidden, -1)
    patches = np.stack([x[r * p:(r + 1) * p, c * p:(c + 1) * p].transpose(2, 0, 1).reshape(-1)
                        for r in range(gh) for c in range(gw)])
    patches = patches @ conv.T + t["vit.embeddings.patch_embeddings.projection.bias"]
    h = np.concatenate([t["vit.embeddings.cls_token"][0], patches, t["vit.embeddings.detection_tokens"][0]])
    h = h + interpolate(t["vit.embeddings.position_embeddings"][0], cfg, gh, gw)
    eps = cfg.get("layer_norm_eps", 1e-12)
    layers = cfg["num_hidden_layers"]
    for i in range(layers):
        q = f"vit.encoder.layer.{i}"
        n = layer_norm(h, t[q + ".layernorm_before.weight"], t[q + ".layernorm_before.bias"], eps)
        d = hidden // heads
        split = lambda m: m.reshape(-1, heads, d).transpose(1, 0, 2)
        qq, kk, vv = (split(linear(n, t, f"{q}.attention.attention.{w}")) for w in ("query", "key", "value"))
        scores = qq @ kk.transpose(0, 2, 1) / math.sqrt(d)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ vv).transpose(1, 0, 2).reshape(-1, hidden)
        h = h + linear(context, t, q + ".attention.output.dense")
        n = layer_norm(h, t[q + ".layernorm_after.weight"], t[q + ".layernorm_after.bias"], eps)
        inner = linear(n, t, q + ".intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / math.sqrt(2)))
        h = h + linear(inner, t, q + ".output.dense")
        if cfg.get("use_mid_position_embeddings") and i < layers - 1:
            h = h + interpolate(t["vit.encoder.mid_position_embeddings"][i, 0], cfg, gh, gw)
    h = layer_norm(h, t["vit.layernorm.weight"], t["vit.layernorm.bias"], eps)
    det = h[-cfg["num_detection_tokens"]:]

    def mlp(prefix, v):
        for k in range(3):
            v = linear(v, t, f"{prefix}.layers.{k}")
            if k < 2:
                v = np.maximum(v, 0)
        return v

    logits = mlp("class_labels_classifier", det)
    boxes = 1 / (1 + np.exp(-mlp("bbox_predictor", det)))
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    labels = {int(k): v for k, v in cfg["id2label"].items()}
    found = []
    for token in range(len(det)):
        index = int(prob[token, :-1].argmax())
        score = float(prob[token, index])
        if score <= threshold:
            continue
        cx, cy, w, hh = boxes[token]
        x0, y0 = (cx - w / 2) * width, (cy - hh / 2) * height
        x1, y1 = (cx + w / 2) * width, (cy + hh / 2) * height
        found.append({"label": labels[index], "index": index, "score": score,
                      "corners": [float(x0), float(y0), float(x1), float(y1)]})
    found.sort(key=lambda o: -o["score"])
    print(json.dumps(found))


if __name__ == "__main__":
    main()
