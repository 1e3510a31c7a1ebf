#!/usr/bin/env bash
# Tasks and cost per million jobs at 100, 1,000 and 10,000 jobs a second,
# from the simulator: steady load for an hour (5 minutes at 10,000 jobs/s,
# to keep the run short), tasks of the stack's
# default size (2 vCPU, 4 GB, 2 browsers x 4 pages = 8 slots) rendering at
# the rate `capacity` measured for that pool on 2 cores (1.73 jobs/s, so
# 8 / 1.73 = 4.6 s per job per slot), BacklogPerTask target 8 (the concurrency; see docs/operations.md), the
# service starting with 25 % headroom over the size the load needs. Prices: Fargate Linux/x86
# on-demand in us-east-1 ($0.04048 per vCPU-hour, $0.004445 per GB-hour),
# S3 PUT $0.005 per 1,000, SQS $0.40 per million requests at 0.3 (worker)
# + 0.1 (producer, batches of 10) requests per job. Check current prices.
#
#   docs/sim/scale.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release -p url2png-scaler
printf '| jobs/s | tasks billed (mean over the run) | tasks running (largest minute) | latency p50 / p99 (s) | Fargate $ per million jobs | S3 + SQS $ per million jobs | total $ per million jobs |\n'
printf '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for rate in 100 1000 10000; do
  seconds=3600
  [ "$rate" -ge 10000 ] && seconds=300
  start=$(awk -v r="$rate" 'BEGIN { printf "%d", r * 4.6 / 8 / 0.8 + 0.999 }')
  out=$(target/release/url2png-scaler simulate --profile "steady:$rate:$seconds" \
    --processing exp:4.6 --concurrency 8 --startup-seconds 60 --target 8 \
    --min-tasks 1 --initial-tasks "$start" --max-tasks 10000 \
    --scale-out-cooldown-seconds 60 --scale-in-cooldown-seconds 300 --seed 1)
  summary=$(printf '%s\n' "$out" | tail -3)
  peak=$(printf '%s\n' "$out" | awk '$1 ~ /^[0-9]+$/ && NF >= 6 { if ($5 > m) m = $5 } END { print m }')
  # Billed task-minutes over the whole run (the load and the drain after
  # it), so the mean is of the same span the peak is taken from.
  drained=$(printf '%s\n' "$summary" | awk '/^jobs/ { for (i = 1; i <= NF; i++) if ($i == "drained") print $(i + 1) }')
  printf '%s\n' "$summary" | awk -v r="$rate" -v peak="$peak" -v minutes="$(awk -v s="$seconds" -v d="${drained:-0}" 'BEGIN { print (s + d) / 60 }')" '
    /^jobs/ { jobs = $2; sub(";", "", jobs); p50 = $5; p99 = $8 }
    /^task-minutes/ { tm = $2; sub(";", "", tm) }
    END {
      hours = tm / 60
      fargate = hours * (2 * 0.04048 + 4 * 0.004445) / jobs * 1e6
      other = 0.005 * 1000 + 0.40 * 0.4
      printf "| %d | %.0f | %d | %s / %s | %.2f | %.2f | %.2f |\n", r, tm / minutes, peak, p50, p99, fargate, other, fargate + other
    }'
done
