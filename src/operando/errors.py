"""Errors operando raises on purpose.

One class per rule. Every message names *where* (the file, array or option), says
what rule was broken with the offending value, and ends with the remedy, so that a
beamline user can fix the input without reading the source::

    raise FrameCountError("sample.tif", "287 frames is not a multiple of 143 energies",
                          remedy="check --energies or pass --scans")

Bad-input errors subclass :class:`ValueError` (or the matching built-in, e.g.
:class:`FileNotFoundError`), so generic handlers keep working.
"""

from __future__ import annotations

from functools import partial

__all__ = [
    "ArchitectureError",
    "AxisError",
    "BlendModeError",
    "ClassNameError",
    "ConfigError",
    "CropError",
    "DatasetLayoutError",
    "DeviceUnavailableError",
    "EdgeCoverageError",
    "EnergyListError",
    "EnergyOrderError",
    "FrameCountError",
    "HaloCoverageError",
    "IncompleteDatasetError",
    "InputError",
    "InputNotFoundError",
    "LabelRangeError",
    "LabelsError",
    "ModelOutputError",
    "NoParticlesError",
    "NonFiniteInputError",
    "OperandoError",
    "OutputExistsError",
    "ParticleSizeError",
    "PatchAxesError",
    "PatchOverlapError",
    "PatchSizeError",
    "ReferenceIndexError",
    "RegionError",
    "RegistrationError",
    "ShapeMismatchError",
    "SharedChunkWriteError",
    "TrainingDataError",
    "TruncatedFileError",
    "UnsupportedDtypeError",
    "UnsupportedFormatError",
    "VoxelSizeError",
    "WeightsFileError",
    "WeightsTamperedError",
]


class OperandoError(Exception):
    """Base class of every error operando raises on purpose."""

    remedy: str = ""

    def __init__(self, where: object, problem: str, *, remedy: str | None = None) -> None:
        self.where = str(where)
        self.problem = problem
        fix = self.remedy if remedy is None else remedy
        self.remedy = fix
        message = f"{self.where}: {problem}"
        super().__init__(f"{message}. {fix}" if fix else message)

    def __reduce__(self):
        # Pickle through the real signature, so that errors raised in dask
        # workers reach the client intact (the default re-calls cls(message)).
        return (partial(type(self), remedy=self.remedy), (self.where, self.problem), self.__dict__)


class InputError(OperandoError, ValueError):
    """An input file, array or option breaks one of operando's rules."""


class ConfigError(InputError):
    """A configuration value (file, ``OPERANDO_*`` variable or flag) is invalid."""

    remedy = "Fix the value or unset the OPERANDO_* variable that sets it."


class InputNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist."""

    remedy = "Check the path and spelling; globs are expanded by the shell."


class UnsupportedFormatError(InputError):
    """The input's file type cannot be read."""

    remedy = "Supported inputs: .tif/.tiff, a folder of 2D .tif slices, .h5/.hdf5 with a dataset path, .xrm/.txrm, .npy, zarr arrays."


class TruncatedFileError(InputError):
    """A file ends before the data its header promises."""

    remedy = "The file is truncated or corrupt: copy it again from the beamline storage, or leave it out."


class ShapeMismatchError(InputError):
    """Inputs that must share a shape do not."""

    remedy = "Crop or pad the inputs to one shape before ingest."


class FrameCountError(InputError):
    """A stack's frame count does not fit the energies (and scans) given."""

    remedy = "Frames must be scans × energies, scan-major; check --energies and --scans."


class EnergyOrderError(InputError):
    """Energies are not strictly increasing."""

    remedy = "List one energy in eV per line, strictly increasing, as acquired."


class NonFiniteInputError(InputError):
    """Float input holds NaN or infinity."""

    remedy = "Replace the non-finite values (e.g. with numpy.nan_to_num) before ingest."


class UnsupportedDtypeError(InputError):
    """The input's data type cannot be ingested."""

    remedy = "Convert to an unsigned/signed integer or float32/float64 array."


class OutputExistsError(InputError, FileExistsError):
    """The output path exists already."""

    remedy = "Choose another output path, or pass --overwrite (overwrite=True) to replace it."


class DatasetLayoutError(InputError):
    """A zarr store is not an operando dataset (missing variable, dims or units)."""

    remedy = "Create datasets with `operando ingest` or operando.io.write_dataset."


class IncompleteDatasetError(OperandoError, RuntimeError):
    """A dataset was never marked complete: its writing stopped part way."""

    remedy = "Run the command that writes it again (with --overwrite), or open it with require_complete=False to inspect what is there."


class EnergyListError(InputError):
    """Energies are missing where the input carries none, or disagree with the input's own."""

    remedy = "Pass --energies with one energy in eV per line, one per frame of a scan."


class PatchOverlapError(InputError):
    """A patch overlap fraction lies outside [0, 1)."""

    remedy = (
        "Pass an overlap fraction in [0, 1), e.g. 0.25 (a quarter of the patch shared with each neighbour)."
    )


class PatchSizeError(InputError):
    """A patch size is not a positive integer per patch axis."""

    remedy = "Pass one positive patch size per patch axis (or one int for all), e.g. patch=256 or patch=(64, 64, 64)."


class PatchAxesError(InputError):
    """The patch axes are not 2 or 3 distinct axes of the array."""

    remedy = (
        "Pass 2 or 3 distinct axes of the array, e.g. axes=(1, 2) for cross-sections of a (z, y, x) volume."
    )


class BlendModeError(InputError):
    """The patch blending mode is unknown."""

    remedy = 'Use blend="mean" (average of overlapping logits) or blend="gaussian".'


class RegionError(InputError):
    """An output region is not a non-empty box of unit-step slices inside the array."""

    remedy = "Pass one slice per array axis, with step 1, inside the array's shape."


class HaloCoverageError(InputError):
    """An input block does not cover the halo its output region needs."""

    remedy = "Read the block with operando.engine.patches.halo_for(grid, region).read and pass its start as block_origin."


class ModelOutputError(InputError):
    """A model returned an output of the wrong type, shape or channel count."""

    remedy = "The model must map a (B, 1, *patch) float32 tensor to (B, C, *patch) logits with the expected C channels."


class SharedChunkWriteError(InputError):
    """A write plan gives parts of one output chunk (or shard) to two tasks."""

    remedy = "Make every task region a whole number of output chunks (shards when the array is sharded), or rechunk the output."


class LabelRangeError(InputError):
    """A label array holds values outside ``[0, n_classes)``."""

    remedy = "Pass a larger n_classes, or relabel the array to consecutive non-negative integers."


class DeviceUnavailableError(InputError):
    """A compute device (e.g. a CUDA GPU) was requested where none is available."""

    remedy = 'Pass device="auto" (a GPU when present, else the CPU) or device="cpu", or run on a machine with a GPU.'


class WeightsFileError(InputError):
    """A weights file is not a readable operando safetensors file (foreign, truncated, malformed header)."""

    remedy = "Pass a .safetensors file written by operando (operando train, or operando.models.weights.save_model)."


class WeightsTamperedError(InputError):
    """A weights file's tensors do not match the checksum recorded in its header."""

    remedy = "The file was altered or corrupted after it was written: retrain, or restore it from a copy."


class ArchitectureError(InputError):
    """A network architecture, preset or its arguments are unknown or inconsistent."""

    remedy = "Use one of the architectures operando provides (ResidualUNet, DualUNet, CycleGAN) and a known preset."


class LabelsError(InputError):
    """Training labels do not fit the image or the classes (shape, values, time matching)."""

    remedy = "Give one label image per labelled timestep, of the image's (z, y, x) shape, with 0 = unlabelled and 1..K = the --classes."


class TrainingDataError(InputError):
    """There is not enough labelled data to train, validate and test."""

    remedy = "Label more pixels: at least a few slices per split with every class present somewhere."


class ClassNameError(InputError):
    """A class name is not among the label variable's classes (its CF ``flag_meanings``)."""

    remedy = "Use the class names stored with the labels (see `operando info`), spelled exactly."


class AxisError(InputError):
    """An axis name (e.g. the electrode normal) is not a spatial dimension of the data."""

    remedy = "Name one of the dataset's spatial dimensions, e.g. --normal-axis z."


class CropError(InputError):
    """A crop is malformed or selects nothing inside the volume."""

    remedy = "Give crops as dim=start:stop in voxels (negative counts from the end), e.g. --crop y=12:-12,x=12:-12."


class ReferenceIndexError(InputError):
    """A reference timestep index lies outside the series."""

    remedy = "Pass a time index in [-T, T), e.g. --reference -1 for the last timestep."


class VoxelSizeError(InputError):
    """Timesteps (or datasets combined) do not share one voxel size."""

    remedy = "Resample the volumes to a common voxel size before combining them."


class RegistrationError(OperandoError, RuntimeError):
    """A registration did not converge; its transform is not applied."""

    remedy = (
        "Check the overlap between the volumes, or try --sub-volumes / a larger --shrink or more iterations."
    )


class NoParticlesError(InputError):
    """No isolated particle is left after detection and filtering."""

    remedy = "Check the reference image, or relax min_size_px, max_size_px or min_jump_fraction."


class ParticleSizeError(InputError):
    """A particle is too large for its region of interest to fit in the frame."""

    remedy = "Crop less, lower margin_px, or pass max_size_px to reject such objects."


class EdgeCoverageError(EnergyListError):
    """The energies leave a normalization or search window with too few points."""

    remedy = "Acquire energies over the pre- and post-edge windows, or pass EdgeWindows matching the scan."
