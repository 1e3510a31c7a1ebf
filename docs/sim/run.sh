#!/usr/bin/env bash
# Re-run the autoscaling simulations behind docs/operations.md: three load
# profiles (steady, a 10x spike, a daily ramp), each with three
# BacklogPerTask targets, as the production stack scales (cool-downs 60 s
# out, 300 s in; 8 slots per task; Fargate start-up 60 s). Writes one SVG
# per run next to this script and prints each run's summary lines.
#
#   docs/sim/run.sh          (builds url2png-scaler first)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release -p url2png-scaler
sim() { target/release/url2png-scaler simulate "$@"; }
common=(--processing exp:2 --concurrency 8 --startup-seconds 60 --max-tasks 100
        --scale-out-cooldown-seconds 60 --scale-in-cooldown-seconds 300 --seed 1)
declare -A profiles=(
  [steady]="steady:10:3600"
  [spike]="steady:2:1800,spike:2:20:1800:600,steady:2:1800"
  [daily]="ramp:1:40:43200,ramp:40:1:43200"
)
for name in steady spike daily; do
  for target in 8 16 40; do
    # Steady starts with the tasks the load needs (2.5), the others with
    # one task, the service's minimum.
    initial=1
    [ "$name" = steady ] && initial=3
    echo "== $name, target $target"
    sim --profile "${profiles[$name]}" "${common[@]}" --target "$target" --min-tasks 1 \
      --initial-tasks "$initial" --svg "docs/sim/$name-target-$target.svg" | tail -3 | head -2
  done
done
