# dreamerjax: `make install`, `make jemalloc`, `make test`, `make train`, `make learning-check`, `make bench`, `make bench-public`, `make lint`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/cartpole
ARGS ?=
LINT_PATHS := $(wildcard dreamerjax scripts experiments tests)

.PHONY: install jemalloc train test bench bench-accelerator bench-public lint learning-check clean distclean FORCE

install: $(STAMP)

# (Re)install when the pins change, when the stamp is missing, or when the venv has no python.
$(STAMP): setup.cfg pyproject.toml $(if $(wildcard $(PY)),,FORCE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

FORCE:

# Debian's jemalloc unpacked into the virtualenv's lib/, no root needed (apt-get download and
# dpkg-deb); the entry scripts then run under it (dreamerjax/run/allocator.py). Pinned to the
# Debian 12 package; JEMALLOC_DEB=libjemalloc2=<version> names another.
JEMALLOC_DEB ?= libjemalloc2=5.3.0-1
JEMALLOC_HELP := could not fetch $(JEMALLOC_DEB) with apt-get download (needs Debian or Ubuntu \
  package lists); install libjemalloc2 another way or set DREAMERJAX_JEMALLOC=<its path>
jemalloc: install
	@tmp=$$(mktemp -d) && dest=$(abspath $(VENV))/lib \
	  && (cd $$tmp && apt-get download $(JEMALLOC_DEB) && dpkg-deb -x libjemalloc2_*.deb root \
	      && cp root/usr/lib/*/libjemalloc.so.2 $$dest/) ; status=$$? ; rm -rf $$tmp ; \
	  if [ $$status -ne 0 ]; then echo "make jemalloc: $(JEMALLOC_HELP)" >&2; exit 1; fi ; \
	  echo "jemalloc: $$dest/libjemalloc.so.2"

train: install
	$(PY) scripts/train.py --config=experiments/classic.py:task=CartPole-v1 --workdir=$(WORKDIR) $(ARGS)

test: install
	$(PY) -m pytest -q -n 2 --durations=15 tests  # the slowest 15, to keep the suite in its budget

# Trains the default on seeds 0 1 2 (one after another) and checks that each learns and holds.
learning-check: install
	$(PY) scripts/learning_check.py --root=runs/learning_check --out=results/learning_check $(ARGS)

bench: install
	$(PY) scripts/benchmark.py --out=benchmarks

# One GPU, about 10 minutes, one JSON (update speed, memory, vmapped seeds, scaling, Atari 100k).
bench-accelerator: install
	$(PY) scripts/bench_accelerator.py --out=benchmarks/accelerator.json $(ARGS)

# Side by side with the 2024 public DreamerV3 code (cloned and installed under /tmp; needs
# python3.11 and PyPI): benchmarks/public_2024.json. ARGS='--source=<local clone>' works offline.
bench-public: install
	$(PY) scripts/bench_public.py --out=benchmarks/public_2024.json $(ARGS)

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also removes the virtualenv.
distclean: clean
	rm -rf $(VENV)
