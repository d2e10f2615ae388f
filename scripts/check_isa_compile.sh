#!/usr/bin/env bash
# Syntax-checks every CPU source for the instruction sets this machine's build did not use
# (setup.py builds for one: avx512, avx2 or none), so intrinsics that only compile for one of them
# are caught without an AVX-512 machine. ~2-3 min per ISA on 2 cores.
#   scripts/check_isa_compile.sh [avx512|avx2|none ...]     (default: avx512 none)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TORCH_INC=$("$PY" -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
PY_INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
status=0
for isa in "${@:-avx512 none}"; do
  for one in $isa; do
    # the flags setup.py builds with (its CPU_ISA_FLAGS literal)
    if ! flags=$("$PY" - "$one" <<'PYEOF'
import ast, sys
tree = ast.parse(open("setup.py").read())
table = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
             and any(getattr(t, "id", None) == "CPU_ISA_FLAGS" for t in n.targets))
if sys.argv[1] not in table:
    sys.exit(f"unknown ISA {sys.argv[1]} ({', '.join(table)})")
print(" ".join(table[sys.argv[1]]))
PYEOF
); then exit 2; fi
    for f in csrc/*.cpp csrc/cpu/*.cpp; do
      # shellcheck disable=SC2086
      if ! ${CXX:-g++} -fsyntax-only -std=c++20 -fopenmp $flags -DTORCH_API_INCLUDE_EXTENSION_H \
          -DTORCH_EXTENSION_NAME=_C -Icsrc -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include" \
          -I"$PY_INC" "$f"; then
        echo "FAILED: $f for $one"; status=1
      fi
    done
    echo "checked $one"
  done
done
exit $status
