#!/usr/bin/env bash
# Predict every published run in ../shared/data/published_runs.csv (memory and tokens/s per GPU) and
# report the errors per source and the rank order within plan sweeps. Add `--report DIR` for the
# Markdown page with plots (benchmarks/validation/ is that page for this file).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
configurator validate --runs "$here/../../shared/data/published_runs.csv" "$@"
