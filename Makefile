# The workbook's commands. `make help` lists them. Each sets up .venv on first use.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Threads for torch inside chapters and tests (2-core machines: both cores). OpenMP's own wait
# policy (spin briefly, then sleep) is kept: PASSIVE made chapter 7's many small per-task
# operations about 1.6x slower (benchmarks/compare.py, 50 episodes: 41 s against 25 s).
export METALIB_THREADS ?= 2
# glibc's allocator (Linux; other systems ignore this) keeps up to 256 MB of freed memory instead
# of handing every large block back to the system: the next tensor of that size reuses mapped
# pages instead of faulting in fresh ones. In fresh processes torch's CPU convolutions over a
# batch of images run up to twice as fast and the recipes train 1.25-1.6x faster
# (benchmarks/results/malloc.md); in the book build, where a long-running kernel's allocator has
# often adapted by itself, it halved chapter 7's adaptation times of fine-tuning and the learners
# on embeddings. A GLIBC_TUNABLES of your own is kept; values are the same either way.
export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=268435456

.DEFAULT_GOAL := help
.PHONY: print-tunables help setup book check-book test test-unit test-gpu lint strip colab exercises check release grade gradescope check-tests lock bench bench-deps clean

help:  ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed (found %d.%d): set PYTHON=python3.11, 3.12 or 3.13" % sys.version_info[:2]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

setup: $(STAMP)  ## Create .venv from the pinned lock (done by every other command when missing)

# `make book REPOSITORY=https://github.com/owner/name [BRANCH=main]` adds Binder and Colab launch
# buttons, and writes the address into every notebook's Colab setup cell (commit those).
BRANCH ?= main
book: $(STAMP)  ## Execute the chapters and build the HTML book into _build/html (warnings fail)
	$(BIN)/python tools/book_assets.py
	$(BIN)/python tools/book_cache.py
	$(if $(REPOSITORY),$(BIN)/python tools/colab.py --repository '$(REPOSITORY)' --branch '$(BRANCH)')
	$(if $(REPOSITORY),$(BIN)/python tools/make_exercises.py)
	$(if $(REPOSITORY),$(BIN)/python tools/book_config.py --repository '$(REPOSITORY)' --branch '$(BRANCH)')
	rm -rf _build/html
	METALIB_PROGRESS=0 $(BIN)/jupyter-book build --all -W -n --keep-going \
	  $(if $(REPOSITORY),--config _build/_config.launch.yml) . 2>&1 | tee _build/book.log; \
	  exit $${PIPESTATUS[0]}

check-book: $(STAMP)  ## Open every book page in headless Chromium: math, widgets, images, links, errors, code and figure widths
	$(BIN)/python tools/check_book.py

# Processes `make test` runs the tests in (pytest-xdist): a 2-core machine keeps both cores busy
# (the tests pin torch's threads, most to one). A file's tests stay in one process, so nbval runs a
# notebook's cells in order. TEST_JOBS=0 runs every test in pytest's own process.
TEST_JOBS ?= 2
test: $(STAMP)  ## Lint, unit tests, then every chapter and solution notebook executed by nbval
	$(BIN)/ruff check .
	$(BIN)/pytest tests chapters solutions --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=600 -p no:cacheprovider -n $(TEST_JOBS) --dist loadfile

test-unit: $(STAMP)  ## Only the unit tests of metalib (fast)
	$(BIN)/pytest tests -m "not slow" -p no:cacheprovider

# `make test-gpu [BUDGET=long] [DEVICE=cuda:1]`: benchmarks/gpu.py, on a machine with a GPU.
test-gpu: $(STAMP)  ## Every notebook and the unit tests on the GPU; writes benchmarks/results/gpu.md
	$(BIN)/python benchmarks/gpu.py --device $(or $(DEVICE),cuda) --budget $(or $(BUDGET),default)

lint: $(STAMP)  ## ruff over the package, tests, tools and notebooks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check metalib tests tools benchmarks

colab: $(STAMP)  ## Name the repository in every notebook's setup cell: make colab REPOSITORY=url [BRANCH=main]
	$(call need,solutions)
	$(BIN)/python tools/colab.py $(if $(REPOSITORY),--repository '$(REPOSITORY)' --branch '$(BRANCH)')
	$(BIN)/python tools/make_exercises.py

# Instructors' commands need what a students' release leaves out (`make release`).
need = @test -e $(1) || { echo "make $@ needs $(1), which the students' release leaves out: run it in the instructors' repository"; exit 2; }

exercises: $(STAMP)  ## Generate exercises/ from solutions/ (answers replaced by stubs)
	$(call need,solutions)
	$(BIN)/python tools/make_exercises.py

check: $(STAMP)  ## Score your exercise on its visible cases, any OS: make check NB=exercises/NN_topic.ipynb
	@test -n "$(NB)" || { echo "usage: make check NB=exercises/NN_topic.ipynb"; exit 2; }
	$(BIN)/python -m metalib.grading.check $(NB)

release: $(STAMP)  ## Write the students' repository: make release OUT=dir [REPOSITORY=url] [BRANCH=main]
	@test -n "$(OUT)" || { echo "usage: make release OUT=dir [REPOSITORY=url]"; exit 2; }
	$(call need,solutions)
	$(BIN)/python tools/release.py '$(OUT)' $(if $(REPOSITORY),--repository '$(REPOSITORY)' --branch '$(BRANCH)')

grade: $(STAMP)  ## Grade notebooks: make grade SUB=folder-or-notebook OUT=results [TESTS=dir]
	$(if $(TESTS),,$(call need,hidden_tests))
	$(BIN)/python -m metalib.grading $(SUB) --out $(OUT) $(if $(TESTS),--tests $(TESTS))

gradescope: $(STAMP)  ## Build the Gradescope autograder upload: _build/gradescope/autograder.zip [TESTS=dir]
	$(if $(TESTS),,$(call need,hidden_tests))
	$(BIN)/python tools/gradescope/build.py $(if $(TESTS),--tests $(TESTS))

check-tests: $(STAMP)  ## Prove a tests folder: solutions score full marks, stubs 0 (make check-tests [TESTS=dir])
	$(call need,solutions)
	$(BIN)/python tools/check_tests.py $(if $(TESTS),--tests $(TESTS))

strip: $(STAMP)  ## Strip outputs and noisy metadata from every notebook (before committing)
	$(BIN)/python tools/strip_notebooks.py

lock: $(STAMP)  ## Re-pin requirements.lock from the current .venv (torch stays at 2.13.0)
	$(BIN)/python tools/make_lock.py > requirements.lock

bench-deps: $(STAMP)  ## Install the benchmarks' only extra: higher 0.2.1, the peer maml_speed times
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps higher==0.2.1

bench: bench-deps  ## Time chapters, book builds, tests and the grader (writes benchmarks/results)
	$(BIN)/python benchmarks/timings.py
	$(BIN)/python benchmarks/grading.py
	$(BIN)/python benchmarks/maml_speed.py

print-tunables:  ## Print the GLIBC_TUNABLES every command runs with (for a JupyterLab of your own)
	@echo '$(GLIBC_TUNABLES)'

clean:  ## Remove the built book and caches (keeps .venv)
	rm -rf _build .pytest_cache
