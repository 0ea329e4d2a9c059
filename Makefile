# The two set-up commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE ?= ../shared/data/im2gps3k-dev
DEMO_STORE ?= demo-store

.PHONY: install demo test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on disk; nothing later may replace it.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# geoclip without its dependencies: they pull torchvision (no CPU build here).
	$(PY) -m pip install -q --no-deps geoclip==1.3.0
	touch $@

demo: install
	@if [ ! -f $(SAMPLE)/im2gps3k-dev.csv ]; then \
	  echo "No sample data at $(SAMPLE). Get Im2GPS3k (im2gps3k_rgb_images + im2gps3k_places365.csv)"; \
	  echo "from the Im2GPS3k release and run: make demo SAMPLE=/path/with/csv-and-images"; exit 2; fi
	@mkdir -p $(DEMO_STORE)
	# The gallery holds every sample photo but the first ten, which are held out to be located.
	sed '2,11d' $(SAMPLE)/im2gps3k-dev.csv > $(DEMO_STORE)/gallery.csv
	$(VENV)/bin/geoagent index $(DEMO_STORE)/gallery.csv --images $(SAMPLE)/images --store $(DEMO_STORE) --errors $(DEMO_STORE)/index-errors.csv
	$(VENV)/bin/geoagent locate $(SAMPLE)/images/$$(sed -n 2p $(SAMPLE)/im2gps3k-dev.csv | cut -d, -f1) --store $(DEMO_STORE)
	@echo "truth: $$(sed -n 2p $(SAMPLE)/im2gps3k-dev.csv | cut -d, -f2,3)   (add --model M [--base-url URL] for the full chain)"

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install
	$(PY) bench/bench_store.py
	$(PY) bench/bench_ingest.py
