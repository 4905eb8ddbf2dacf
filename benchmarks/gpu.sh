#!/usr/bin/env bash
# Runs the tgjax-vs-PyTorch benchmark suite on a GPU machine and writes JSON.
#
# Usage (from the repository root):  bash benchmarks/gpu.sh [OUT_DIR]
# Installs a CUDA build of jaxlib and PyTorch only when the ones present cannot
# see a GPU, then runs benchmarks/run.py (full suite, both branch strategies
# of the conv case) under an overall limit of 8 minutes.
set -uo pipefail

out_dir="${1:-${OUT:-benchmarks/out}}"
mkdir -p "$out_dir"
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
# Share the GPU with PyTorch and make peak-memory statistics meaningful.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
deadline=$((SECONDS + 480))

log() { echo "[gpu.sh $(date +%T)] $*"; }

if ! python -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null; then
  jax_version="$(python -c 'import jax; print(jax.__version__)' 2>/dev/null || echo)"
  spec="jax[cuda12]${jax_version:+==$jax_version}"
  log "installing $spec"
  timeout 180 pip install -q "$spec" || log "could not install $spec"
fi
if ! python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  log "installing torch==2.13.0 (CUDA build from the default index)"
  timeout 180 pip install -q "torch==2.13.0" || log "could not install torch"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  > "$out_dir/nvidia-smi.csv" 2>&1 || true
python -c "import jax; print(jax.devices())" || exit 1
python -c "import torch; print(torch.__version__, torch.cuda.is_available())" \
  || log "PyTorch unavailable: the peer columns stay empty"

left=$((deadline - SECONDS - 10))
if [ "$left" -lt 60 ]; then
  log "under a minute left after installing; running the quick suite"
  quick="--quick"
else
  quick=""
fi
log "running the suite (${left}s left)"
timeout "$left" python benchmarks/run.py $quick --json "$out_dir/gpu.json" \
  2>&1 | tee "$out_dir/gpu.log"
status=${PIPESTATUS[0]}
log "exit status $status; results in $out_dir/gpu.json"
exit "$status"
