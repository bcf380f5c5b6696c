# `make quickstart`: create .venv, install pinned deps, fetch SmolLM2, run pipelines/quickstart.yaml, report it.
# `make test`: the same set-up, then the default test run (what .ci/run calls).
VENV ?= .venv
PY := $(VENV)/bin/python
SQ := $(VENV)/bin/sparsequant
EXTRAS ?= dev

.PHONY: setup model corpus quickstart smoke test test-slow
setup: $(VENV)/.installed model

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel; anything unpinned would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

model: $(VENV)/.installed
	$(SQ) fetch smollm2-135m

# General-English training text (Jane Austen, Debian's r-cran-janeaustenr; no R, no root) for
# pipelines/cast_smollm2.yaml and the CAST benchmarks: runs/corpora/austen_{train,heldout}.txt.
corpus: $(VENV)/.installed
	$(PY) -m pip install -q rdata==1.1.0
	$(PY) benchmarks/tools/austen_corpus.py --out-dir runs/corpora

quickstart: setup
	$(SQ) run pipelines/quickstart.yaml
	$(SQ) report runs/quickstart --out runs/quickstart/report

smoke: $(VENV)/.installed
	$(SQ) run pipelines/smoke.yaml

# pytest exits 5 when it collected no tests: for us that is a broken test tree, so it fails loudly.
test: setup
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the test tree is broken" >&2; exit 1; fi; \
	exit $$rc

test-slow: setup
	$(PY) -m pytest -m slow
