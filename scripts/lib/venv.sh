# shellcheck shell=bash
# The Python tools the chart's tests use (tests/chart/requirements.txt), in a venv under target/ so
# nothing is installed into the system's Python. Sets $venv_python. Source it from the repo root.

ensure_venv() {
  local venv=target/venv-chart
  if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/chart/requirements.txt "$venv/requirements.txt"; then
    echo "==> python venv for the chart's tests ($venv)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || { apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/chart/requirements.txt >&2
    cp tests/chart/requirements.txt "$venv/requirements.txt"
  fi
  # shellcheck disable=SC2034 # read by the sourcing script
  venv_python="$PWD/$venv/bin/python"
}

# matplotlib, for the benchmarks' pictures (scripts/plot-rollout.py), in a venv of its own: the
# chart's tests (and CI) do not need it. Sets $plot_python.
ensure_plot_venv() {
  local venv=target/venv-plot
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    echo "==> python venv for the benchmark's plots ($venv)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "matplotlib==3.10.7" >&2
  fi
  # shellcheck disable=SC2034 # read by the sourcing script
  plot_python="$PWD/$venv/bin/python"
}
