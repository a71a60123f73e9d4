#!/usr/bin/env bash
# The long reliability suites (docs/reliability.md): SIGKILL the real agent at every named step and
# at random moments of apply and remove against a real containerd with a live container, checking the
# host after each kill and that the next run converges; then apply/remove cycles with live containers.
#   scripts/fault.sh [--runs 200] [--cycles 100] [--seed N]
# (The test suite runs a short version: tests/tests/faults.rs.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p kwasm-agent -p kwasm-tests --bin kwasm-agent --bin kw-fault
exec target/release/kw-fault "$@"
