#!/usr/bin/env bash
# The main job, end to end on synthetic data: synthesize raw beamline-style files
# for a CT time series and a XANES stack, ingest them out of core, describe them.
set -euo pipefail
out=${OPERANDO_DEMO_DIR:-demo-output}
rm -rf "$out"
mkdir -p "$out"

echo "== synthesize a Li-metal cell CT time series (raw 3D TIFFs + truth)"
operando synth ct --format tiff -o "$out/ct_raw"
echo "== ingest it"
operando ingest ct "$out"/ct_raw/t*.tif --voxel-size 1.33 --times "$out/ct_raw/times.txt" -o "$out/cell.zarr"

echo "== synthesize a TXM-XANES stack (raw sample/flat/dark TIFFs + truth)"
operando synth xanes --format tiff -o "$out/xanes_raw"
echo "== ingest it"
operando ingest xanes --sample "$out/xanes_raw/sample.tif" --flat "$out/xanes_raw/flat.tif" \
    --dark "$out/xanes_raw/dark.tif" --energies "$out/xanes_raw/energies.txt" --pixel-size 0.03 -o "$out/stack.zarr"

echo
operando info "$out/cell.zarr"
echo
operando info "$out/stack.zarr"
