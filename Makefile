# zoo — the commands a developer runs. Everything builds once, in release mode: the tests run real
# networks, which are unusably slow in debug builds, and sharing one profile keeps CI to one build.

CARGO   ?= cargo
SHARED  ?= ../shared
THREADS ?= $(shell nproc)
BENCH_OUT ?= target/bench
BENCH_TEXTS ?= 300
# bench-vision: rounds of zoo then the peer, and seconds per row. On a shared machine whose speed
# drifts, several short rounds compared round by round give a fairer ratio than one long pair.
ROUNDS  ?= 1
BENCH_SECONDS ?= 5
ZOO     := target/release/zoo

.PHONY: setup run test bench bench-vision bench-serve lint fuzz clean calibrate-int8

## setup: build the release binary (target/release/zoo)
setup:
	$(CARGO) build --release --locked

## run: classify the bundled sample photos with the bundled model (no network needed)
run: setup
	$(ZOO) run image-classification tests/data/chelsea.png tests/data/coffee.png --top-k 3

## test: unit, parity, accuracy and end-to-end tests (reads ../shared for references)
test:
	$(CARGO) test --release --locked --workspace

## bench: zoo's speed next to the onnxruntime peer on the same model, threads and inputs
bench: bench-vision
	RAYON_NUM_THREADS=$(THREADS) $(CARGO) bench --locked -p zoo-object-detection --bench detect | tee $(BENCH_OUT)/zoo-detection.jsonl
	@if [ -d "$(SHARED)/bench" ]; then \
		scripts/bench-venv.sh "$(SHARED)/bench" && \
		/tmp/bench-venv/bin/python scripts/detection_ort.py "$(SHARED)/bench" --threads $(THREADS) --min-time 5 \
			| tee $(BENCH_OUT)/peer-detection.jsonl && \
		python3 scripts/bench_compare.py $(BENCH_OUT)/zoo-detection.jsonl $(BENCH_OUT)/peer-detection.jsonl; \
	else echo "bench: $(SHARED)/bench not found; peer comparison skipped"; fi
	RAYON_NUM_THREADS=$(THREADS) $(CARGO) bench --locked -p zoo-face-recognition --bench faces | tee $(BENCH_OUT)/zoo-face.jsonl
	@if [ -d "$(SHARED)/assets/models/face" ]; then \
		scripts/face_tfjs/run.sh "$(SHARED)" --threads $(THREADS) --min-time 5 | tee $(BENCH_OUT)/peer-face.jsonl && \
		python3 scripts/bench_compare.py $(BENCH_OUT)/zoo-face.jsonl $(BENCH_OUT)/peer-face.jsonl; \
	else echo "bench: $(SHARED)/assets/models/face not found; face peer comparison skipped"; fi
	RAYON_NUM_THREADS=$(THREADS) ZOO_BENCH_TEXTS=$(BENCH_TEXTS) $(CARGO) bench --locked -p zoo-fake-news --bench encode | tee $(BENCH_OUT)/zoo-text.jsonl
	@if [ -d "$(SHARED)/bench" ]; then \
		eval "$$($(SHARED)/bin/test-assets --env)" && \
		/tmp/bench-venv/bin/python "$(SHARED)/bench/text_minilm_ort.py" --batches 1,32 --threads $(THREADS) \
			--graphs plain --sort chars --n $(BENCH_TEXTS) | tee $(BENCH_OUT)/peer-text.jsonl && \
		python3 scripts/bench_compare.py $(BENCH_OUT)/zoo-text.jsonl $(BENCH_OUT)/peer-text.jsonl; fi
	eval "$$($(SHARED)/bin/test-assets --env)" && RAYON_NUM_THREADS=$(THREADS) BENCH_OUT=$(abspath $(BENCH_OUT)) \
		$(CARGO) bench --locked -p zoo-speech-recognition --bench transcribe | tee $(BENCH_OUT)/zoo-speech.jsonl
	eval "$$($(SHARED)/bin/test-assets --env)" && RAYON_NUM_THREADS=$(THREADS) BENCH_OUT=$(abspath $(BENCH_OUT)) ZOO_BENCH_COMPUTE_TYPE=int8 \
		$(CARGO) bench --locked -p zoo-speech-recognition --bench transcribe | tee -a $(BENCH_OUT)/zoo-speech.jsonl
	@if [ -d "$(SHARED)/bench" ]; then \
		eval "$$($(SHARED)/bin/test-assets --env)" && scripts/bench-venv.sh "$(SHARED)/bench" && \
		/tmp/bench-venv/bin/python "$(SHARED)/bench/speech_faster_whisper.py" --threads $(THREADS) \
			--manifest "$(SHARED)/assets/data/speech/manifest.tsv" --out-dir $(BENCH_OUT) | tee $(BENCH_OUT)/peer-speech.jsonl && \
		/tmp/bench-venv/bin/python "$(SHARED)/bench/speech_faster_whisper.py" --threads $(THREADS) --compute-type int8 \
			--manifest "$(SHARED)/assets/data/speech/manifest.tsv" --out-dir $(BENCH_OUT) | tee -a $(BENCH_OUT)/peer-speech.jsonl && \
		python3 scripts/bench_compare.py $(BENCH_OUT)/zoo-speech.jsonl $(BENCH_OUT)/peer-speech.jsonl && \
		$(CARGO) build --release --locked -p zoo-cli && \
		python3 scripts/speech_long_bench.py "$(SHARED)" /tmp/bench-venv/bin/python --threads $(THREADS) --reps 3 \
			--out $(BENCH_OUT) --zoo-rows $(BENCH_OUT)/zoo-speech.jsonl | tee $(BENCH_OUT)/speech-long.jsonl; fi
	@if [ -d "$(SHARED)/assets" ]; then $(MAKE) --no-print-directory bench-serve; \
	else echo "bench: $(SHARED)/assets not found; serve bench skipped"; fi

## bench-vision: the image and style rows alone, ROUNDS times zoo then the peer (e.g. ROUNDS=5
## BENCH_SECONDS=2), each ratio the median of the rounds' own
# Each row is tagged with its round, for bench_compare to pair; a failed run stops the loop, since
# a round short of rows would compare nothing.
BENCH_ROUND = > $(BENCH_OUT)/round.jsonl && sed "s/^{/{\"round\":$$round,/" $(BENCH_OUT)/round.jsonl | tee -a
bench-vision:
	@mkdir -p $(BENCH_OUT)
	@rm -f $(BENCH_OUT)/zoo-image.jsonl $(BENCH_OUT)/peer-image.jsonl $(BENCH_OUT)/zoo-style.jsonl $(BENCH_OUT)/peer-style.jsonl
	@for round in $$(seq $(ROUNDS)); do \
		echo "bench-vision: image, round $$round of $(ROUNDS)"; \
		RAYON_NUM_THREADS=$(THREADS) ZOO_BENCH_SECONDS=$(BENCH_SECONDS) $(CARGO) bench --locked \
			-p zoo-image-classification --bench classify $(BENCH_ROUND) $(BENCH_OUT)/zoo-image.jsonl || exit 1; \
		RAYON_NUM_THREADS=$(THREADS) ZOO_BENCH_SECONDS=$(BENCH_SECONDS) ZOO_BENCH_MODEL=efficientnet-lite0-int8 \
			$(CARGO) bench --locked -p zoo-image-classification --bench classify \
			$(BENCH_ROUND) $(BENCH_OUT)/zoo-image.jsonl || exit 1; \
		if [ -d "$(SHARED)/bench" ]; then \
			scripts/bench-venv.sh "$(SHARED)/bench" && \
			/tmp/bench-venv/bin/python "$(SHARED)/bench/image_efflite0_ort.py" --verify 0 --batches 1,32 \
				--threads $(THREADS) --min-time $(BENCH_SECONDS) $(BENCH_ROUND) $(BENCH_OUT)/peer-image.jsonl || exit 1; \
		fi; \
	done
	@if [ -s $(BENCH_OUT)/peer-image.jsonl ]; then \
		python3 scripts/bench_compare.py $(BENCH_OUT)/zoo-image.jsonl $(BENCH_OUT)/peer-image.jsonl; \
	else echo "bench: $(SHARED)/bench not found; peer comparison skipped"; fi
	@for round in $$(seq $(ROUNDS)); do \
		echo "bench-vision: style, round $$round of $(ROUNDS)"; \
		RAYON_NUM_THREADS=$(THREADS) ZOO_BENCH_SECONDS=$(BENCH_SECONDS) $(CARGO) bench --locked \
			-p zoo-style-transfer --bench stylize $(BENCH_ROUND) $(BENCH_OUT)/zoo-style.jsonl || exit 1; \
		if [ -d "$(SHARED)/bench" ]; then \
			scripts/bench-venv.sh "$(SHARED)/bench" && \
			/tmp/bench-venv/bin/python "$(SHARED)/bench/style_ort.py" --threads $(THREADS) --min-time $(BENCH_SECONDS) \
				--sizes-ms26 256,512,1024,2048 --sizes-magenta 256,384,512 \
				$(BENCH_ROUND) $(BENCH_OUT)/peer-style.jsonl || exit 1; \
		fi; \
	done
	@if [ -s $(BENCH_OUT)/peer-style.jsonl ]; then \
		python3 scripts/bench_compare.py $(BENCH_OUT)/zoo-style.jsonl $(BENCH_OUT)/peer-style.jsonl; \
	else echo "bench: $(SHARED)/bench not found; peer comparison skipped"; fi

## bench-serve: zoo serve under 1, 8 and 64 concurrent clients next to zoo run on the same inputs
bench-serve: setup
	@mkdir -p $(BENCH_OUT)
	eval "$$($(SHARED)/bin/test-assets --env)" && python3 scripts/bench_serve.py --threads $(THREADS) --out $(BENCH_OUT)

## calibrate-int8: measure efficientnet-lite0-int8's activation ranges on images that are not the
## ImageNet dev images its accuracy is measured on (the detection, style and face fixtures)
CALIBRATION_IMAGES := data/detection/dog.jpg data/detection/person.jpg data/detection/horses.jpg \
	data/detection/kite.jpg data/detection/giraffe.jpg data/detection/scream.jpg data/detection/fastestdet_3.jpg \
	data/style/content-images/amber.jpg data/faces/faces.jpg data/faces/angry.jpg
calibrate-int8:
	$(CARGO) run --release --locked -p zoo-image-classification --example calibrate -- \
		--model efficientnet-lite0 --root $(SHARED)/assets $(CALIBRATION_IMAGES) > weights/efficientnet-lite0-int8/calibration.json

## fuzz: each fuzz target for FUZZ_SECONDS (default 60) from its corpus (needs `cargo install cargo-fuzz`;
## RUSTC_BOOTSTRAP lets the stable toolchain take cargo-fuzz's instrumentation flags)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := image_decode audio_decode ct2_reader catalog_parse model_config
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz -O --sanitizer none $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 || exit 1; \
	done

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
