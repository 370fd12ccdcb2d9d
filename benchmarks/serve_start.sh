#!/bin/bash
# time from `moecloud serve` start to its "serving" line, on a given home
home=${1:?usage: benchmarks/serve_start.sh HOME_DIR}
start=$(date +%s.%N)
MOECLOUD_HOME=$home .venv/bin/moecloud serve > ${LOG:-/tmp/moecloud-serve-start.log} 2>&1 &
pid=$!
for i in $(seq 1 600); do
  if grep -qi "moecloud is serving" ${LOG:-/tmp/moecloud-serve-start.log}; then break; fi
  sleep 0.2
done
end=$(date +%s.%N)
echo "ready after $(echo "$end - $start" | bc) s"
kill -TERM $pid; wait $pid 2>/dev/null
