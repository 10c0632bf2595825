#!/usr/bin/env bash
# The main job, end to end on synthetic data, as a beamline user would run it:
#   CT:    raw TIFFs → ingest → register → label a few cross-sections → train →
#          segment → statistics (volumes, thickness, maps, edges, Faraday)
#   XANES: raw TIFFs → ingest → detect, track and align particles → edge-energy maps
#   then one HTML report of both runs.
# Extra arguments go to every step that computes, e.g. `--cluster tcp://host:8786`
# or `--cluster slurm --jobs 4` (default: an embedded LocalCluster).
set -euo pipefail
out=${OPERANDO_DEMO_DIR:-demo-output}
train_seconds=${OPERANDO_DEMO_TRAIN_SECONDS:-150}
cluster=("$@")
rm -rf "$out"
mkdir -p "$out/ct" "$out/xanes"
timings="$out/timings.json"
echo "{" > "$timings"

step() {  # step NAME COMMAND...: run it, print a header, record its wall time
    local name=$1 start=$SECONDS
    shift
    echo
    echo "== $name"
    "$@"
    echo "  \"$name\": $((SECONDS - start))," >> "$timings"
}

# The electrodes carry a static texture (as Li foil does) for registration to lock onto.
step "synthesize CT (raw TIFFs + truth)" operando synth ct --format tiff --texture-rms 0.1 -o "$out/ct_raw"
step "ingest CT" operando ingest ct "$out"/ct_raw/t*.tif --voxel-size 1.33 \
    --times "$out/ct_raw/times.txt" -o "$out/cell.zarr" "${cluster[@]}"
# Registered on the stripping electrode below its deepest pit (z < 8): the only material
# that does not change; everything above it grows, dissolves or swells.
step "register CT timesteps" operando ct register "$out/cell.zarr" -o "$out/ct/registered.zarr" \
    --static-region z=0:8 --sub-volume-size 64 "${cluster[@]}"
# The reference timestep (the last) shows every class; its labels need no registration.
step "label a few cross-sections (from the truth)" operando synth labels "$out/ct_raw/truth.zarr" \
    -o "$out/ct/labels" --every 8 --times 5
# Other slices of the same timestep, labelled for checking: the statistics correct the model's
# class volumes by its confusions there (error-adjusted volumes, with standard errors).
step "label check slices (from the truth)" operando synth labels "$out/ct_raw/truth.zarr" \
    -o "$out/ct/check" --every 8 --first 0 --times 5
step "train the small model" operando train "$out/ct/registered.zarr" \
    --labels "$out/ct/labels/labels_t5.tif" --classes background,electrode,deposited,dendrite,pit \
    --patch 32 --context 2 --time-limit "$train_seconds" --device cpu -o "$out/ct/model.safetensors"
step "segment" operando ct segment "$out/ct/registered.zarr" --model "$out/ct/model.safetensors" \
    -o "$out/ct/segmented.zarr" --device cpu "${cluster[@]}"
step "CT statistics" operando ct stats "$out/ct/segmented.zarr" -o "$out/ct/stats" \
    --crop z=4:-4,y=8:-8,x=8:-8 --plating-side high --current-density 1.5 --current-on 0:120 \
    --reference-labels "$out/ct/check/labels_t5.tif" "${cluster[@]}"

step "synthesize XANES (raw TIFFs + truth)" operando synth xanes --format tiff -o "$out/xanes_raw"
step "ingest XANES" operando ingest xanes --sample "$out/xanes_raw/sample.tif" --flat "$out/xanes_raw/flat.tif" \
    --dark "$out/xanes_raw/dark.tif" --energies "$out/xanes_raw/energies.txt" --pixel-size 0.03 \
    -o "$out/stack.zarr" "${cluster[@]}"
step "XANES particles: detect, track, align, edge maps" operando xanes run "$out/stack.zarr" \
    -o "$out/xanes/run" "${cluster[@]}"

echo "  \"total\": $SECONDS" >> "$timings"
echo "}" >> "$timings"
echo
echo "== report"
operando report "$out" -o "$out/report.html"
echo
echo "done in $SECONDS s: open $out/report.html"
