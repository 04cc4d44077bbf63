# Set-up and the two everyday commands. Each target creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch / torchvision as a pair that imports together (a mismatched torchvision breaks open_clip and Lightning)
TORCH  ?= torch==2.14.1 torchvision==0.29.1
SAM2   ?= sam2==1.1.0

.PHONY: install train test test-slow lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	# SAM 2.1 (model/sam=hiera_*): Meta's package; its CUDA extension only serves video post-processing,
	# and an isolated build would fetch a multi-GB CUDA torch, so build it against the torch above
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --quiet --no-build-isolation $(SAM2)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## train on the synthetic default, then test the selected checkpoint and print the metrics
train: $(BIN)/.installed
	$(BIN)/rsrefseg-train $(ARGS)

## the test suite without the long runs (7–10 minutes on 2 cores)
test: $(BIN)/.installed
	WANDB_MODE=disabled $(BIN)/python -m pytest -m "not slow" $(ARGS)

## the long runs: the full default training with its quality floor, SLURM / preemption / resume jobs,
## two-process DDP / gloo tests, notebook 02 training its own checkpoint (19 min)
test-slow: $(BIN)/.installed
	WANDB_MODE=disabled $(BIN)/python -m pytest -m slow $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests
