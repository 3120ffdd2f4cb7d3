#!/usr/bin/env bash
# Augmentation variants at the full default schedule, side by side on one GPU machine:
# each variant trained three ways by bench/augmentation.py (without the purple staining
# group, without the pink one, and on both), one JSON line per run in $RESULTS.
# EPOCHS: the default schedule, 45 (the sweep in docs/benchmarks.md ran at 30, the default
# of the time). A CPU machine would need about an hour per run; a GPU runs several at once in minutes.
#
#   DATA=/path/to/pcam_real [SPLIT=split-folder] RESULTS=results.jsonl JOBS=4 WORKERS=3 PYTHON=python3 bash bench/stain_sweep.sh
# SPLIT (a split folder, split.csv inside, made from DATA elsewhere) skips validation, for a GPU machine without
# Great Expectations.
set -u
py=${PYTHON:-python3}
data=${DATA:?set DATA to the data folder}
results=${RESULTS:-bench-out/stain-sweep/results.jsonl}
jobs=${JOBS:-4}
epochs=${EPOCHS:-45}
workers=${WORKERS:-3}  # loader processes per run: keep JOBS * (WORKERS + 1) within the cores
out=${SWEEP_OUT:-/tmp/stain-sweep}
split=()
[ -n "${SPLIT:-}" ] && split=(--split "$SPLIT")
export PYTHONUNBUFFERED=1
mkdir -p "$out" "$(dirname "$results")"

# name and TrainConfig overrides of each variant, most wanted first; VARIANTS=FILE reads
# them from a file instead, one per line
variants=(
  "base"
  "vec10 stain_vector_jitter=0.1"
  "vec20 stain_vector_jitter=0.2"
  "hed10cj15 hed_jitter=0.1 color_jitter=0.15"
  "hed10cj15vec20 hed_jitter=0.1 color_jitter=0.15 stain_vector_jitter=0.2"
  "hed10cj25vec30 hed_jitter=0.1 color_jitter=0.25 stain_vector_jitter=0.3"
)

[ -n "${VARIANTS:-}" ] && mapfile -t variants <"$VARIANTS"

"$py" bench/augmentation.py --prepare --data "$data" --out "$out" "${split[@]}" || exit

run() {  # run HOLD_OUT NAME [KEY=VALUE ...]
  local hold=$1 name=$2; shift 2
  local sets=() flag=() tag=$name
  for kv in "$@"; do sets+=(--set "$kv"); done
  if [ "$hold" != none ]; then flag=(--hold-out-stain "$hold"); tag=$name-no-$hold; fi
  "$py" bench/augmentation.py --name "$tag" --epochs "$epochs" --data "$data" --out "$out" "${split[@]}" "${flag[@]}" \
    --set device=cuda --set num_workers="$workers" "${sets[@]}" >"$out/$tag.log" 2>&1 \
    && printf '%s\n' "$(tr -d '\n' <"$out/$tag.json")" >>"$results" \
    && tail -n 1 "$out/$tag.log" || echo "$tag failed: $(tail -n 3 "$out/$tag.log")"
}

for hold in purple pink none; do
  for v in "${variants[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    # shellcheck disable=SC2086
    run "$hold" $v &
  done
done
wait
