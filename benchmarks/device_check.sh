#!/usr/bin/env bash
# Everything the lab's GPU must show (issue 19), in one run that writes to one folder:
#   1. the device-parametrised tests (engine oracles against zennit/captum and closed forms, the
#      precision policy, the device policy, the runner's resume test, a dashboard AppTest), their
#      CUDA variants; junit XML and the log;
#   2. benchmarks/bench_engine.py: VGG16, ResNet-50, EfficientNet-B0, vit_b_16 at batch 1, 8, 64;
#   3. benchmarks/bench_evaluation.py: the 11-method Pointing Game (IG/SmoothGrad at 50 steps) on
#      bundled scenes, extrapolated to scenes:5000, and with VGG16/ResNet-50 at 224 px,
#      extrapolated to VOC07 test.
# Sized for under 8 minutes on one H100/H200 with 16 CPU cores: each stage has a time limit
# (LIMIT, seconds for the whole script: 450; TESTS_S for the tests: 170) and says when it was cut.
# On a loaded CPU the smoke run needs longer (LIMIT 1200, TESTS_S 800 by default there).
#
#   OUT=/tmp/out bash benchmarks/device_check.sh          # or: bash benchmarks/device_check.sh /tmp/out
#   OUT=/tmp/out SMOKE=1 bash benchmarks/device_check.sh  # tiny settings: checks the script on a CPU
#
# Everything lands in $OUT and, after every stage, in the one archive $OUT/device_check.tar.gz.
set -u
OUT=${1:-${OUT:?set OUT or pass a folder}}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
T0=$(date +%s)
if [ "${SMOKE:-0}" = 1 ]; then LIMIT=${LIMIT:-1200}; TESTS_S=${TESTS_S:-800}; else LIMIT=${LIMIT:-450}; TESTS_S=${TESTS_S:-170}; fi
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/device_check.log"; }
pack() { tar -czf "$OUT/device_check.tar.gz.part" -C "$OUT" $(cd "$OUT" && ls | grep -v '^device_check.tar.gz') \
           && mv "$OUT/device_check.tar.gz.part" "$OUT/device_check.tar.gz"; }
stage() {  # stage NAME SECONDS COMMAND...: run with the smaller of SECONDS and the time left
  local name=$1 want=$2; shift 2
  local t=$(( want < $(left) ? want : $(left) ))
  if [ "$t" -lt 10 ]; then log "skip $name: $(left) s left"; return; fi
  log "start $name (limit $t s)"
  timeout "$t" "$@" > "$OUT/$name.md" 2> "$OUT/$name.err"
  local rc=$?
  [ $rc = 124 ] && log "$name CUT at $t s (partial output kept)" || log "$name rc=$rc"
  pack
}
export CLRP_TEST_THREADS=${CLRP_TEST_THREADS:-4} CLRP_OFFLINE=1
python - > "$OUT/environment.txt" 2>&1 <<'EOF'
import os, platform, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cpus", os.cpu_count(), platform.platform())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        print(f"cuda:{i} {torch.cuda.get_device_name(i)} {total / 2**30:.0f} GiB ({free / 2**30:.0f} GiB free)")
else:
    print("no CUDA device")
EOF
log "$(tr '\n' ';' < "$OUT/environment.txt")"

if [ "${SMOKE:-0}" = 1 ]; then
  TESTS=(tests/test_devices.py tests/test_precision.py tests/test_app_devices.py
         "tests/test_runner.py::test_run_and_resume_equal_one_uninterrupted_run")
  SELECT=(-m "not slow")
  ENGINE=(--models resnet18 --batch 1 --reps 1 --size 64 --ig-steps 2 --threads 1)
  EVAL=(--only-all-methods --all-methods-images 2 --all-methods-vgg-images 0 --steps 2 --threads 1)
  XDIST=(-n 0)
else
  TESTS=(tests/test_oracles.py tests/test_engine.py tests/test_precision.py tests/test_devices.py
         tests/test_runner.py tests/test_app_devices.py)
  # the CUDA variants of the oracle, closed-form and runner tests (their CPU variants run in CI),
  # and all of the device, precision and dashboard-device tests
  SELECT=(-k "cuda or test_precision or test_devices or test_app_devices")
  ENGINE=(--models vgg16 resnet50 efficientnet_b0 vit_b_16 --batch 1 8 64 --reps 3 --ig-steps 50)
  EVAL=(--only-all-methods --all-methods-images 500 --all-methods-vgg-images 32 --steps 50)
  XDIST=(-n 4)
fi

stage tests "$TESTS_S" python -m pytest -q -rs "${XDIST[@]}" -p no:cacheprovider "${TESTS[@]}" "${SELECT[@]}" \
  --junitxml="$OUT/tests.xml"
stage bench_engine 170 python benchmarks/bench_engine.py --device auto "${ENGINE[@]}"
stage bench_evaluation 130 python benchmarks/bench_evaluation.py --device auto "${EVAL[@]}" \
  --json "$OUT/bench_evaluation.json"
grep -E "passed|failed|error" "$OUT/tests.md" | tail -1 | sed 's/^/tests: /' | tee -a "$OUT/device_check.log"
log "done"
pack
