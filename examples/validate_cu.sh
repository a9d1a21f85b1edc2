#!/usr/bin/env bash
# Validate the shipped Cu model (or MODEL=path/to/model.pt) against the Mishin et al. (2001)
# Cu EAM that labelled its training data, and sanity-check the workflow itself:
#
#   bash examples/validate_cu.sh [OUTDIR]       (default OUTDIR: validation)
#
# writes OUTDIR/{summary,vacancy,neb}.{json,md}, OUTDIR/neb.png (both MEPs with the model's
# ensemble band), OUTDIR/neb_{model,reference}.extxyz; OUTDIR/summary.md is the README table.
# Exit status: 0 when every check passes, 1 when one fails (CI gate), 2 on bad input.
# About 1-2 minutes on one CPU core (4x4x4 cell, 255/256 atoms, 7 NEB images).
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-validation}
REF=lammps:eam/alloy:Cu_mishin1.eam.alloy
MODEL_ARGS=()
if [[ -n "${MODEL:-}" ]]; then MODEL_ARGS=(--model "$MODEL"); fi

# 1. the workflow itself: the reference against itself reproduces Mishin 2001
#    (E_f = 1.27 eV, E_m = 0.69 eV; the reports show 1.2735 and 0.6888 eV) and passes trivially
mlip-md validate all --model "ref:$REF" --reference "$REF" --supercell 4 --images 7 -o "$OUT/reference_check"

# 2. the model against the reference (goal: |dE_f| <= 0.05 eV, barrier within 5 %)
#    vacancy: relaxed at fixed cell, each calculator at its own lattice constant (--a auto)
#    neb: nearest-neighbour vacancy hop, 7 images, climbing image, improved tangent
mlip-md validate all "${MODEL_ARGS[@]}" --reference "$REF" --supercell 4 --images 7 -o "$OUT"

# optional variants (not part of the README table):
#   mlip-md validate vacancy "${MODEL_ARGS[@]}" --reference "$REF" --relax positions+volume -o "$OUT/volume"
#   mlip-md validate neb "${MODEL_ARGS[@]}" --reference "$REF" --initial is.extxyz --final fs.extxyz -o "$OUT/user_path"
