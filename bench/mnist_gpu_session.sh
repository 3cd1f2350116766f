#!/bin/sh
# One call on a lent GPU machine (the device tool's `run`), from the repository root, carrying .whl (diffusers and
# importlib_metadata wheels, absent from the machine's image) and $FROM (a folder holding `teacher/`, trained on a
# CPU by `bench/mnist_diffusers_gpu.py teacher`, and `mnist20k.npy`):
#     sh bench/mnist_gpu_session.sh k1-low-seed0 k1-low-seed1 k4-seed0 k4-t60-seed0
# Students (names from bench/mnist_diffusers_gpu.py's STUDENTS) share the GPU for $BUDGET seconds; their samples
# come back under $OUT/samples for `bench/mnist_diffusers_gpu.py score` on a CPU.
set -e
FROM=${FROM:-bench/out/gpu}
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 bench/mnist_diffusers_gpu.py run --work "${WORK:-/tmp/work}" --teacher "$FROM/teacher" \
    --data "$FROM/mnist20k.npy" --samples "${OUT:-/tmp/out}/samples" --budget "${BUDGET:-450}" \
    --threads "${THREADS:-2}" --students "$@"
