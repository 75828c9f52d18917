# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup compiler data cluster test demo bench results curves clean

setup: $(STAMP)

# torch/torchvision resolve to the wheels already on these machines (see README); elsewhere to PyPI's.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench,tracking]'
	touch $@

# A C++ compiler for torch.compile's CPU backend (inductor), which the cpu scale uses.
compiler:
	@if command -v g++ >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++; \
	else echo "no C++ compiler (g++): runs with compile = true will fail; install g++"; fi

# Real Fashion-MNIST, offline: Debian's dataset-fashion-mnist package (idx files under $(FMNIST)).
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not found in $(FMNIST); install dataset-fashion-mnist or pass --data-root"; fi

# A real single-node SLURM cluster for the dispatch tests. In CI it must come up; elsewhere the
# SLURM tests skip with the reason when it cannot (not root, no apt-get).
cluster:
	@bash slurm/local_cluster.sh up || { [ -z "$$CI" ] || exit 1; echo "SLURM cluster not started; its tests will skip"; }

test: setup compiler data cluster
	$(PY) -m pytest tests

# The main job: train and evaluate the demo's first seed, then its table, figures, report and an index, all where
# git ignores them (runs/results/), so a checkout stays clean; then its numbers beside the committed demo's.
DEMO_RESULTS ?= runs/results
demo: setup compiler data
	$(VENV)/bin/ablate run ablations/demo.toml --set 'seeds=[0]'
	$(VENV)/bin/ablate collect ablations/demo.toml --set 'seeds=[0]' --results-root $(DEMO_RESULTS)
	$(VENV)/bin/ablate results --results-root $(DEMO_RESULTS)
	$(VENV)/bin/ablate compare $(DEMO_RESULTS)/demo results/demo
	@echo "report: $(DEMO_RESULTS)/demo/report.md (the committed demo's: results/demo/report.md)"

# Every committed figure, report and results/README.md, redrawn from the committed rows alone.
results: setup
	$(VENV)/bin/ablate results

# Every answer as a curve (results/METHODS.md, "Every answer as a curve"): the four training questions and the
# sampler question (which scores the baseline's runs) at the curve scale, and the demo's three seeds (its own
# recipe, no scale). Two one-thread workers share one runs root, the claims give each run to one of them, and
# they take the questions in opposite orders; a run whose committed record (RECORDS) holds a spec's rows is done
# for it, and each run a worker finishes is recorded there. Stopped, it resumes where it stood (run it again, on
# this machine or a fresh one). Then the tables and the index.
CURVES_ROOT ?= runs-curves
CURVES      := prediction:curve schedule:curve loss:curve norm:curve sampler:curve demo:
SCALE_OF     = $$(s=$${qs\#*:}; [ -z "$$s" ] || echo --scale $$s)
RECORDS     ?= results/runs
curves: setup compiler data
	( for qs in $(CURVES); do OMP_NUM_THREADS=1 $(VENV)/bin/ablate run ablations/$${qs%:*}.toml $(SCALE_OF) \
		--runs-root $(CURVES_ROOT) --records $(RECORDS) --no-progress || exit 1; done ) & \
	( for qs in $$(echo $(CURVES) | tr ' ' '\n' | tac); do OMP_NUM_THREADS=1 $(VENV)/bin/ablate run \
		ablations/$${qs%:*}.toml $(SCALE_OF) --runs-root $(CURVES_ROOT) --records $(RECORDS) --no-progress \
		|| exit 1; done ) & \
	wait
	# the sample-set noise check the parity margins cite: prediction's runs scored again at their last
	# checkpoint with sample seed 1 (DDIM-20 and the NLL; the same weights, other x_T and noise)
	OMP_NUM_THREADS=1 $(VENV)/bin/ablate run ablations/prediction.toml --scale curve --set eval.sample_seed=1 \
		--set 'eval.eval_at=[]' --set 'eval.denoise_t=[]' --runs-root $(CURVES_ROOT) --records $(RECORDS) --no-progress
	for qs in $(CURVES); do $(VENV)/bin/ablate collect ablations/$${qs%:*}.toml $(SCALE_OF) \
		--runs-root $(CURVES_ROOT) --records $(RECORDS) || exit 1; done
	$(VENV)/bin/ablate results

# Micro-benchmarks (not part of the tests): JSON, tidy table, ratios and a plot under results/bench/.
bench: setup compiler data
	mkdir -p results/bench
	$(PY) -m pytest bench --benchmark-json=results/bench/bench.json
	$(VENV)/bin/ablate bench results/bench/bench.json --out results/bench

clean:
	rm -rf $(VENV) .pytest_cache
