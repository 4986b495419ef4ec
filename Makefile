# Two entry points on a fresh machine with only Python 3.11:
#   make demo  - the main job end to end on the embedded default (real teacher, real text)
#   make test  - the test suite (what CI runs through .ci/run)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# llama.cpp's AMX kernels crash on these Xeons (Q4_K/Q8_0 repack, SIGSEGV): build it without AMX.
export CMAKE_ARGS ?= -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
export PIP_DISABLE_PIP_VERSION_CHECK = 1

DEMO_TOKENS ?= 16384# about 5 minutes on 2 cores (8 steps); benchmarks/distill_vs_ce.py trains longer

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt  # llama-cpp-python compiles once (~6 min), then pip's cache has it
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/nano convert gemma3-270m --out runs/gemma3-270m --overwrite
	$(BIN)/nano data prepare --tokenizer runs/gemma3-270m
	$(BIN)/nano eval runs/gemma3-270m --data held-out --json runs/gemma3-270m-heldout.json
	$(BIN)/nano generate runs/gemma3-270m --prompt "SQLite is" --max-tokens 48
	$(BIN)/nano distill --teacher runs/gemma3-270m --student student_20m --tokens $(DEMO_TOKENS) \
	    --out runs/distill-student_20m --resume
	$(BIN)/nano eval runs/distill-student_20m/student --data held-out --json runs/distill-student_20m-heldout.json
	$(BIN)/nano generate runs/distill-student_20m/student --prompt "SQLite is" --max-tokens 32
	$(BIN)/nano export runs/distill-student_20m/student --out runs/student_20m.tflite --litertlm
	$(BIN)/nano generate runs/student_20m.litertlm --prompt "SQLite is" --max-tokens 32  # LiteRT-LM: same text as above
	$(BIN)/nano quantize runs/distill-student_20m/student --out runs/student_20m-int4 --method gptq --overwrite
	$(BIN)/nano generate runs/student_20m-int4 --prompt "SQLite is" --max-tokens 32
	$(BIN)/nano export runs/student_20m-int4 --out runs/student_20m-int4.tflite --litertlm
	$(BIN)/nano generate runs/student_20m-int4.litertlm --prompt "SQLite is" --max-tokens 32
	$(BIN)/nano export runs/student_20m-int4 --out runs/student_20m-int4.gguf
	$(BIN)/nano bench runs/student_20m-int4.tflite --gguf runs/student_20m-int4.gguf --prompt-lens 128 \
	    --decode-tokens 32 --repeats 1

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
