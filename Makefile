# The two commands (README): `make report` sets up and runs every notebook into reports/;
# `make test` sets up and runs the tests. Both create .venv and install everything themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and alone, from a range that admits the local CPU build, so that pip
# never pulls a multi-GB CUDA build as a dependency of something else. Override for a GPU build.
TORCH_SPEC ?= torch>=2.4,<2.14

.PHONY: setup report test clean train-toy train-toy-dit browser

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

report: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m nbhelpers.report --out reports --models toy toy-dit

# Debian's chromium for tests/test_browser.py (Playwright drives the system browser; nothing is
# downloaded by `playwright install`). Never fails: without chromium that test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ]; then echo "browser: /usr/bin/chromium is installed"; \
	else SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  if $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; \
	  then echo "browser: installed /usr/bin/chromium"; \
	  else echo "browser: could not install Debian's chromium (needs root or passwordless sudo, and apt); tests/test_browser.py will be skipped"; fi; \
	fi

# Two pytest-xdist workers, one core each; a module's tests stay on one worker (tests/conftest.py: the heaviest first).
TEST_WORKERS ?= 2
test: setup browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

train-toy: setup
	$(BIN)/python -m nbhelpers.toyworld.train --out data/models/toy --minutes 1000 --max-steps 3200 --extend-steps 3000
	$(BIN)/python -m nbhelpers.toyworld.evaluate --card data/models/toy/README.md

# The second world model (SD3 layout, rectified flow, the toy model's VAE); its card is written by hand from
# `python -m nbhelpers.toyworld.evaluate --model toy-dit`.
train-toy-dit: setup
	$(BIN)/python -m nbhelpers.toyworld.train --arch dit --out data/models/toy-dit --minutes 1000 --max-steps 9000 \
	  --extend-steps 5000 --extend-kind-weights pair=1.5,subject=3 --extend-steps 3000 --extend-kind-weights subject=6 \
	  --extend-steps 1500 --extend-kind-weights subject=3 \
	  --extend-steps 1500 --extend-kind-weights subject=9 --extend-steps 1500 --extend-kind-weights subject=5 \
	  $(foreach k,1 2 3,--extend-open-layout none --extend-open-size none --extend-extra-logsnr none \
	    --extend-exact-targets none) \
	  --extend-open-layout 1 --extend-open-size 1 --extend-extra-logsnr=-6,-2 --extend-exact-targets -4
	$(BIN)/python -m nbhelpers.toyworld.evaluate --model toy-dit

clean:
	rm -rf reports .pytest_cache
