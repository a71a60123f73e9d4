#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Writes manifests/deploy/ (plain manifests for `kubectl apply -f`) from the Helm chart's defaults,
# with Helm's own engine. CI checks they are in sync (tests/chart/test_chart.py).
set -euo pipefail
cd "$(dirname "$0")/.."
. "$(dirname "$0")/lib/venv.sh"
ensure_venv
mkdir -p manifests/deploy
"$venv_python" - <<'PY'
import sys
sys.path.insert(0, "tests/chart")
import helm_python as helm
from test_chart import CHART, render_plain
for name, text in render_plain(helm.Chart.load(str(CHART))).items():
    with open(f"manifests/deploy/{name}", "w") as f:
        f.write(text)
    print(f"manifests/deploy/{name}")
PY
