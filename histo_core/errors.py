"""Error types that light modules (the command line's error handling) must name without
importing the heavy ones (torch) that raise them."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file that is not a checkpoint this project wrote: missing, truncated, or unsafe."""


class DeviceUnavailableError(RuntimeError):
    """A device named in the config that this machine does not have (no CUDA GPU, fewer
    GPUs than the index, no MPS): an environment problem, not a wrong argument."""


class UnservableVersionError(ValueError):
    """A registry version that cannot serve (weights missing, corrupt, or not loadable as
    their recorded architecture): the champion pointer is never moved to it."""


class RunGuardError(RuntimeError):
    """The machine-wide lock folder of the run guard cannot be created or opened: an
    environment problem (permissions, a full or read-only disk)."""


class DependencyError(RuntimeError):
    """A library the pipeline needs cannot be imported by this interpreter (missing, broken,
    or at odds with its settings): an environment problem that a retry on the same
    machine cannot mend."""


class TooFewImagesToAdapt(ValueError):
    """Adapting BatchNorm statistics to the scored images was asked for, and the data has
    fewer readable images than it needs (``inference.MIN_ADAPT_IMAGES``)."""
