#!/bin/sh
# One call on a lent GPU machine (the device tool's `run`), from the repository root, carrying $WHL (diffusers and
# importlib_metadata wheels, absent from the machine's image: `pip download --no-deps -d bench/out/whl
# diffusers==0.42.1 importlib_metadata`) and $FROM (a folder holding `teacher/`, trained on a CPU by
# `bench/mnist_diffusers_gpu.py teacher --work bench/out/gpu --data bench/out/gpu/mnist20k.npy`, and `mnist20k.npy`):
#     sh bench/mnist_gpu_session.sh k1-low-seed0 k1-low-seed1 k4-seed0 k4-t60-seed0
# First the tests only a GPU runs (tests/test_gpu.py, a minute) and the trainer's overhead on the GPU
# (bench/throughput.py, which needs $FROM/shared: a copy of ../shared/data's mnist/train20k-images.npz and
# real-teachers/mnist-ddpm/); then the students (names from
# bench/mnist_diffusers_gpu.py's STUDENTS) share the GPU for $BUDGET seconds; their samples come back under
# $OUT/samples for `bench/mnist_diffusers_gpu.py score` on a CPU.
set -e
FROM=${FROM:-bench/out/gpu}
WHL=${WHL:-bench/out/whl}
if [ -d "$WHL" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
PYTHONPATH="src:${PYTHONPATH:-}" timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py \
    || echo "tests/test_gpu.py: failed (above)"
if [ -d "$FROM/shared" ]; then
    PYTHONPATH="src:${PYTHONPATH:-}" timeout 150 python3 bench/throughput.py --out /tmp/throughput --iters 60 \
        --repeats 2 --threads 2 --shared "$FROM/shared" && mkdir -p "${OUT:-/tmp/out}" \
        && cp /tmp/throughput/results.json "${OUT:-/tmp/out}/throughput.json" || echo "bench/throughput.py: failed"
fi
python3 bench/mnist_diffusers_gpu.py run --work "${WORK:-/tmp/work}" --teacher "$FROM/teacher" \
    --data "$FROM/mnist20k.npy" --samples "${OUT:-/tmp/out}/samples" --budget "${BUDGET:-450}" \
    --threads "${THREADS:-2}" --students "$@"
