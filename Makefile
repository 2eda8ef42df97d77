# ddpm-course: the two commands are `make course` and `make test`.
# Both create .venv (Python 3.11+) when it is missing and install what they need.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
RUN    ?= runs/digits
PRESET ?= digits
NPROC  ?= 1
QUICK  ?= 1
TORCHRUN := $(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC)

.PHONY: course test bench lab clean help chromium

help:
	@echo "make course  train the default model with torchrun, sample, evaluate (creates .venv)"
	@echo "             NPROC=2 for 2 ranks (batch size is per rank), PRESET=textures, RUN=runs/x,"
	@echo "             QUICK=0 to run the notebooks with the learner default (QUICK=False)"
	@echo "make test    run the whole test suite (creates .venv)"
	@echo "make bench   benchmark ddpm_lib against diffusers (about 20 min on 2 CPU cores; GPU mode on a GPU)"
	@echo "make lab     open JupyterLab in notebooks/"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Runtime packages, and the package itself in editable mode so notebooks import ddpm_lib.
$(VENV)/.runtime: requirements.txt pyproject.toml | $(PY)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ddpm-course)" >/dev/null
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PIP) install -q -r requirements-dev.txt
	touch $@

course: $(VENV)/.runtime
	@start=$$(date +%s); \
	$(TORCHRUN) -m ddpm_lib.train --config $(PRESET) --run-dir $(RUN) && \
	$(TORCHRUN) -m ddpm_lib.sample --run-dir $(RUN) --per-class 8 && \
	$(TORCHRUN) -m ddpm_lib.sample --run-dir $(RUN) --per-class 50 --name eval --quiet && \
	$(PY) -m ddpm_lib.evaluate --run-dir $(RUN) --samples $(RUN)/samples/eval.npz && \
	$(PY) scripts/run_notebooks.py $(if $(filter 0,$(QUICK)),--full,) && \
	echo "" && \
	echo "Results ($$(( $$(date +%s) - start ))s):" && \
	echo "  sample grid     $(RUN)/samples/grid.png" && \
	echo "  samples         $(RUN)/samples/samples.npz" && \
	echo "  metrics         $(RUN)/metrics.json" && \
	echo "  training log    $(RUN)/log.jsonl" && \
	echo "  EMA weights     $(RUN)/ema.pt" && \
	echo "  notebooks       build/html/index.html (executed copies in build/notebooks/)"

test: $(VENV)/.dev chromium
	$(PY) -m pytest -q

# The browser test drives Debian's chromium through Playwright (never `playwright install`).
# Installed with apt when missing (as root, or with passwordless sudo); otherwise the test
# is skipped with a loud reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "warning: no apt-get; install chromium yourself or the browser test is skipped"; exit 0; fi; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing chromium with apt-get (for the browser test) ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; } || \
	    echo "warning: could not install chromium; the browser test will be skipped"; }

# Results are appended to scripts/benchmarks/results/<date>_<cpu|gpu>.jsonl; the tables of scripts/benchmarks/README.md come from there.
bench: $(VENV)/.dev
	$(PY) scripts/bench.py

lab: $(VENV)/.runtime
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf runs build
