# Two commands on a fresh clone:  make run  (default benchmark)  and  make test  (test suite).
# Both build .venv first: torch==2.13.0 (CPU wheel) before everything else, so nothing pulls a CUDA torch.
VENV      ?= .venv
PY        := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES     ?= 2
SNAPSHOTS ?= ../shared/hf
SMK_ARGS  ?=
DEVICE    ?= cuda
TESTS     ?= not slurm       # pytest -m expression; CI widens it to "slurm or not slurm" (needs root)

.PHONY: venv run smoke paper report gpu-check test test-fast test-slurm clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

run: venv                     ## the default benchmark (config.yaml) -> results/
	$(SNAKEMAKE) --cores $(CORES) --config snapshots=$(SNAPSHOTS) $(SMK_ARGS)

smoke: venv                   ## tiny end-to-end run (configs/smoke.yaml), a few minutes
	$(SNAKEMAKE) --cores $(CORES) --configfile configs/smoke.yaml --config snapshots=$(SNAPSHOTS) $(SMK_ARGS)

paper: venv                   ## full-scale DistilBERT experiment (needs the hub or snapshots, and GPUs)
	$(SNAKEMAKE) --cores $(CORES) --configfile configs/paper.yaml $(SMK_ARGS)

gpu-check: venv               ## on a GPU node, before a cluster run: every CUDA path, pass/fail table (DEVICE=cpu to try here)
	$(PY) benchmarks/gpu_check.py --device $(DEVICE)

report: venv                  ## Snakemake's HTML report of the last run -> results/report.html
	$(SNAKEMAKE) --config snapshots=$(SNAPSHOTS) $(SMK_ARGS) --report results/report.html

test: venv                    ## every test but the real-Slurm ones, the end-to-end Snakemake runs included
	LORABENCH_SNAPSHOTS=$(SNAPSHOTS) $(VENV)/bin/pytest -m "$(strip $(TESTS))" tests

test-fast: venv               ## unit tests only
	LORABENCH_SNAPSHOTS=$(SNAPSHOTS) $(VENV)/bin/pytest -m "not e2e and not slurm" tests

test-slurm: venv              ## the real-Slurm tests only (root: installs and starts a one-node Slurm)
	LORABENCH_SNAPSHOTS=$(SNAPSHOTS) $(VENV)/bin/pytest -m slurm tests

clean:                        ## remove generated results and caches (keeps .venv)
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf resources .snakemake
