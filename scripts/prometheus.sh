#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Prometheus and promtool from Debian's own `prometheus` package, unpacked under target/prometheus
# (apt-get download: checked against this machine's signed package index; nothing installed, no
# service made). The alert tests run promtool (`check rules`, `test rules`) on the chart's rules; the
# end-to-end test runs Prometheus against real agents. Cached. The directory holding `prometheus` and
# `promtool` is the LAST line of output.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/target/prometheus
if [ ! -x "$dir/usr/bin/promtool" ]; then
  mkdir -p "$dir"
  rm -f "$dir"/prometheus_*.deb
  (cd "$dir" && apt-get download -qq prometheus 2>/dev/null) \
    || { apt-get update -qq && (cd "$dir" && apt-get download -qq prometheus 2>/dev/null); }
  dpkg -x "$dir"/prometheus_*.deb "$dir"
fi
echo "$("$dir/usr/bin/promtool" --version 2>&1 | head -n 1) in $dir/usr/bin" >&2
echo "$dir/usr/bin"
