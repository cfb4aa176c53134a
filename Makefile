# One entry point for people and CI: every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PACKAGES := espeak-ng libportaudio2 chromium

.PHONY: install system-deps demo test bench clean

install: system-deps $(STAMP)

# Debian packages: espeak-ng makes speech for examples and training data; libportaudio2 backs sounddevice;
# chromium is the real browser of the WebRTC tests (Playwright drives it; no browser download).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch==2.13.0 goes in first (a CPU build on this kind of machine); setup.cfg's range then adds nothing.
# A .venv made before the face models became ONNX files still has mediapipe (and its numpy<2 and
# protobuf<5 pins): it goes, so the test extra's pipecat-ai and livekit-agents resolve as in a new one.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip uninstall -q -y mediapipe 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/lipsync-rt infer --face examples/face.jpg --audio examples/speech.wav --outfile results/demo.mp4

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Every benchmark measures its own baseline in the same run; results and plots land in benchmarks/.
bench: install
	$(BIN)/lipsync-rt bench engine --json benchmarks/engine_cpu.json --plot benchmarks/engine_cpu.png
	$(BIN)/lipsync-rt bench pipeline --engine torch --json benchmarks/pipeline_cpu.json --plot benchmarks/pipeline_cpu.png
	$(BIN)/lipsync-rt bench pipeline --engine int8 --face examples/face.jpg --push-ms 20 --push-rate 24000 --seconds 180 --json benchmarks/pipeline_cpu_avatar_tts.json --plot benchmarks/pipeline_cpu_avatar_tts.png
	$(BIN)/lipsync-rt bench pipeline --interrupt --engine torch --seconds 180 --json benchmarks/interrupt_cpu.json --plot benchmarks/interrupt_cpu.png
	$(BIN)/lipsync-rt bench webrtc --engine torch --json benchmarks/webrtc_cpu.json --plot benchmarks/webrtc_cpu.png
	$(BIN)/python benchmarks/bench_infer.py --json benchmarks/infer_auto_cpu.json
	$(BIN)/python benchmarks/bench_server_memory.py --sessions 300 --warm-up 40 --json benchmarks/server_memory_cpu.json
	$(BIN)/python benchmarks/bench_server_memory.py --sessions 300 --warm-up 40 --arenas glibc --json benchmarks/server_memory_cpu_glibc_arenas.json
	$(BIN)/python benchmarks/bench_mel_threads.py --json benchmarks/mel_threads_cpu.json

clean:
	rm -rf $(VENV) results build *.egg-info
