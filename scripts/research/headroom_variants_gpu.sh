#!/usr/bin/env bash
# The hard preset's open headroom question (issue 10), on one GPU run: train the 8-conv network on
# world variants (clrp.scenes.hard.VARIANTS) with the shipped recipe, then measure each variant's
# Pointing Game with the model trained on it (scripts/research/headroom_probe.py). About 150 s of training
# and 60 s of probing per variant on one H100/H200 with 16 CPU cores.
#
#   OUT=/tmp/out bash scripts/research/headroom_variants_gpu.sh                       # context, small
#   OUT=/tmp/out VARIANTS=crowded,partners bash scripts/research/headroom_variants_gpu.sh
#   OUT=/tmp/out SMOKE=1 bash scripts/research/headroom_variants_gpu.sh               # tiny settings, CPU is fine
#
# Everything lands in $OUT and, after every stage, in the one archive $OUT/headroom_variants.tar.gz
# (weights, metadata, training logs, probe tables): copy that back, nothing else is needed.
set -u
OUT=${OUT:?set OUT}
mkdir -p "$OUT/models"
T0=$(date +%s)
LIMIT=${LIMIT:-540}          # seconds: no stage starts a training it cannot finish by then
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/variants.log"; }
pack() { tar -czf "$OUT/headroom_variants.tar.gz.part" -C "$OUT" models variants.log $(cd "$OUT" && ls probe_*.md 2>/dev/null) \
           && mv "$OUT/headroom_variants.tar.gz.part" "$OUT/headroom_variants.tar.gz"; }
DEV=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
NCPU=$(nproc)
if [ "${SMOKE:-0}" = 1 ]; then
  TRAIN="--train-scenes 64 --steps 3 --batch 8 --heldout 16 --monitor 0 --log-every 3"
  PROBE="--n 3"
  NEED=20
else
  TRAIN="--train-scenes 40000 --steps 5000 --batch 128 --heldout 1000 --monitor 300 --log-every 1000"
  PROBE="--n 300"
  NEED=170
fi
log "device $DEV, $NCPU CPUs, variants ${VARIANTS:-context,small}"
for v in $(echo "${VARIANTS:-context,small}" | tr ',' ' '); do
  if [ "$(left)" -lt "$NEED" ]; then log "skip $v: $(left) s left"; continue; fi
  log "train $v"
  timeout "$(left)" python scripts/assets/train_hard_model.py --variant "$v" --depths 8 $TRAIN --device "$DEV" --threads 4 \
    --workers "$NCPU" --out "$OUT/models" --depth-out "$OUT/models" > "$OUT/models/train_$v.out" 2>&1
  log "train $v rc=$? ($(grep -h 'held-out mAP' "$OUT/models/train_$v.out" | cut -c1-60))"
  pack
  [ -f "$OUT/models/scene_vgg_d8_$v.pt" ] || continue
  log "probe $v"
  timeout "$(left)" python scripts/research/headroom_probe.py $PROBE --variants "$v" --device "$DEV" --threads 4 \
    --model "$v=$OUT/models/scene_vgg_d8_$v.pt" > "$OUT/probe_$v.md" 2>>"$OUT/variants.log"
  log "probe $v rc=$?"
  pack
done
log "done"
pack
