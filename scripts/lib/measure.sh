# shellcheck shell=bash
# Timing helpers shared by the benchmark scripts.
now() { date +%s.%N; }
calc() { awk "BEGIN { print $* }"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
