# orch: `make demo` runs the quickstart job, `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU cluster, e.g. `make install TORCH_SPEC='torch>=2.1'` with your CUDA index.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-unit test-integration test-slurm slurm-up slurm-down bench browser-deps system-deps clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/orch submit jobs/quickstart.yaml --wait
	$(BIN)/orch status

# Unit and integration tests always; SLURM tests run when a cluster answers (`make slurm-up`),
# and skip with a reason otherwise (CI sets ORCH_REQUIRE_SLURM=1, which turns a skip into a failure).
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: install
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

test-slurm: install
	$(BIN)/python -m pytest -q tests/slurm $(PYTEST_ARGS)

# Headless Chromium for the report's browser tests (Debian packages; only as root, only when missing).
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromedriver missing and not root: the browser tests will skip"; fi

# tmux (the terminal tests drive `orch status` in a real 80/120-column terminal) and zsh (the
# completion test sources `orch completion zsh`); Debian packages, only as root, only when missing.
system-deps:
	@if command -v tmux >/dev/null && command -v zsh >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux zsh >/dev/null; \
	else echo "tmux/zsh missing and not root: the terminal and zsh completion tests will skip"; fi

slurm-up:
	bash tests/slurm/cluster.sh up

slurm-down:
	bash tests/slurm/cluster.sh down

bench: install
	$(BIN)/python bench/status_scale.py
	$(BIN)/python bench/monitor_scale.py
	$(BIN)/python bench/trainer_overhead.py
	$(BIN)/python bench/preserve_speed.py
	$(BIN)/python bench/submit_scale.py
	$(BIN)/python bench/gpu_check.py --out results/gpu_check.json
	$(BIN)/python bench/report_scale.py
	$(BIN)/python bench/plan_accuracy.py
	$(BIN)/python bench/step_speed.py --arch nanogpt gpt2 --repeats 3
	$(BIN)/python bench/tokenize_scale.py --sizes-mb 100 500
	$(BIN)/python bench/shakespeare_reference.py --seeds 1337 1

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
