#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The catalog controller's API cost (issue 17): `bench-fleet --catalog` at two fleet sizes, same
# probe and same changes, and the ratio of its requests per node change between them — constant in
# the number of nodes means a ratio of 1. Writes docs/catalog-benchmark.md.
#   scripts/bench-catalog.sh [SMALL] [LARGE]     (default 50 200)
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-50}
large=${2:-200}
cargo build --release --quiet -p kwasm-tests --bin bench-fleet
run() { target/release/bench-fleet "$1" --catalog; }
echo "==> bench-fleet $small --catalog" >&2
a=$(run "$small")
echo "==> bench-fleet $large --catalog" >&2
b=$(run "$large")
v() { awk -v k="$2" '$1 == k && NF == 2 {print $2}' <<<"$1"; }
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (x == 0) print (y == 0 ? "1.00" : "inf"); else printf "%.2f", y / x }'; }
out=docs/catalog-benchmark.md
{
  echo "# Catalog controller: API cost"
  echo
  echo "Written by \`scripts/bench-catalog.sh $small $large\` on $(date -u +%Y-%m-%dT%H:%M:%SZ); $(nproc) cores."
  echo "Real agents (\`restart = \"none\"\`, \`[catalog] shim_objects = true\`) and \`kwasm-agent catalog\` (\`status_interval = \"1s\"\`) against the tests' API server; requests counted in its audit log by User-Agent (\`kwasm-agent/… (catalog)\`)."
  echo "A *counted* node change flips one node's readiness label (the Shim's READY moves by one; the run waits for the status to show it); an *unrelated* one sets another label. Lease and watch renewals go by the clock and are left out of the per-change figures."
  echo
  echo "| figure | $small nodes | $large nodes | ratio |"
  echo "|---|---|---|---|"
  for k in catalog_requests_per_counted_node_change catalog_requests_per_unrelated_node_change catalog_provision_requests catalog_provision_requests_per_node provision_requests_per_node watches_open idle_requests_per_node_per_hour; do
    echo "| $k | $(v "$a" "$k") | $(v "$b" "$k") | $(ratio "$(v "$a" "$k")" "$(v "$b" "$k")") |"
  done
  echo
  echo "Requests per counted node change, by kind ($large nodes):"
  echo
  grep '^catalog_requests [A-Z]' <<<"$b" | sed -e 's/^catalog_requests /- /'
  echo
  echo "Provisioning the whole fleet costs the controller a handful of status writes, not one per node: changes within \`status_interval\` fold into one write per Shim, so the writes follow how long the rollout lasts (\`kubectl annotate --all\` took $(v "$a" annotate_s) s for $small nodes and $(v "$b" annotate_s) s for $large here), at most one per \`status_interval\`. An idle agent following Shim objects holds three watches (its Node, the Shims, the restart grantor's Lease), each renewed hourly: $(v "$b" idle_requests_per_node_per_hour) requests per node per hour at $large nodes, $(v "$a" idle_requests_per_node_per_hour) at $small — the difference is the grantor's own Lease renewals, one agent's, shared by fewer nodes."
} > "$out"
cat "$out"
