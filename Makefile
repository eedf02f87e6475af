# Two commands from a fresh clone: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install install-spark spark-lock spark-runtime-lock demo test test-fast lint bench lock runtime-lock clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Nudge needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/dbt parse --quiet --project-dir dbt_project --profiles-dir dbt_project
	@touch $(STAMP)

install: $(STAMP)

# Spark (nudge[spark]) on top: the tests need it, the demo does not.
SPARK_STAMP := $(VENV)/.spark-stamp
$(SPARK_STAMP): $(STAMP) requirements.spark.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -r requirements.spark.lock
	@touch $(SPARK_STAMP)

install-spark: $(SPARK_STAMP)

demo: install
	$(BIN)/nudge demo

# Two workers (CI has 2 cores), file by file; the Spark files all on one (tests/conftest.py).
TEST_WORKERS ?= 2
test: install-spark
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/pytest -m "not integration and not postgres and not browser and not spark"

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .

bench: install-spark
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Re-resolve the pinned direct dependencies and write the full locked set.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# Locked dependency set (pip freeze of a clean install of pyproject's pins + dev extras)."; \
	  echo "# Regenerate: make lock"; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -vi '^nudge=='; } > requirements.lock
	rm -rf .venv-lock
	$(MAKE) runtime-lock
	$(MAKE) spark-runtime-lock

# The production images' lock: pyproject's runtime dependencies only (no dev extras), at the
# versions of requirements.lock, each with its files' hashes (pip install --require-hashes).
runtime-lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet pip-tools==7.4.1
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile --quiet --generate-hashes \
	  --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  -c requirements.lock -o requirements.runtime.lock pyproject.toml
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) data dbt_project/target dbt_project/logs

# Re-resolve the Spark extra against requirements.lock: what it adds, pinned.
spark-lock: install
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -r requirements.lock
	.venv-lock/bin/pip freeze | sort > .venv-lock/base.txt
	.venv-lock/bin/python -m pip install --quiet -c requirements.lock 'pyspark[connect]==4.3.0' 'dbt-spark[session]==1.11.0'
	{ sed -n '1,/^# Regenerate/p' requirements.spark.lock; \
	  .venv-lock/bin/pip freeze | sort | comm -13 .venv-lock/base.txt -; } > requirements.spark.lock.new
	mv requirements.spark.lock.new requirements.spark.lock
	rm -rf .venv-lock
	$(MAKE) spark-runtime-lock

# The images' Spark locks (docker/docker-compose.spark.yml), hashed as runtime-lock's: the
# runtime set plus nudge[spark] for the code image built with NUDGE_EXTRAS=spark, and pyspark
# alone for the spark-connect server, at the versions of requirements.lock and
# requirements.spark.lock.
spark-runtime-lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet pip-tools==7.4.1
	CUSTOM_COMPILE_COMMAND="make spark-runtime-lock" .venv-lock/bin/pip-compile --quiet \
	  --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --extra spark -c requirements.lock -c requirements.spark.lock \
	  -o requirements.spark.runtime.lock pyproject.toml
	grep '^pyspark==' requirements.spark.lock > .venv-lock/spark-connect.in
	CUSTOM_COMPILE_COMMAND="make spark-runtime-lock" .venv-lock/bin/pip-compile --quiet \
	  --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  -c requirements.spark.lock -o requirements.spark-connect.runtime.lock .venv-lock/spark-connect.in
	rm -rf .venv-lock
