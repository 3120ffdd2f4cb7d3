"""What a checkpoint file holds, written and read in one place.

Every checkpoint carries the model (weights, architecture name and arguments, and the
training config). ``last.pt`` adds the ``TrainingState`` a retried run resumes from.
Files are plain dicts of tensors and built-in values, so they load with
``torch.load(..., weights_only=True)``: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from histo_core.atomic import atomic_write
from histo_core.config import TrainConfig
from histo_core.errors import CheckpointError

MODEL_KEYS = {"model", "model_name", "model_kwargs"}


@dataclass
class TrainingState:
    """Everything besides the weights that a resumed run needs to continue exactly where
    an uninterrupted one would have: optimizer and schedule, the RNGs that decide the
    next batches and dropout masks, and the history that early stopping reads."""

    epoch: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    history: list[dict[str, float]]
    best_val_loss: float
    sampler_rng: torch.Tensor
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    world: int
    trained_model: dict[str, torch.Tensor] | None  # the optimizer's weights, when "model" holds their average
    averaged_steps: int

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], path: Path | str) -> "TrainingState":
        missing = sorted({f.name for f in fields(cls)} - set(state))
        if missing:
            raise CheckpointError(f"{path}: holds no training state to resume from (missing {missing}); "
                                  "only last.pt does")
        return cls(**{f.name: state[f.name] for f in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        """Shallow, unlike ``dataclasses.asdict``, which would deep-copy every optimizer tensor."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def model_record(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """The part of every checkpoint that rebuilds the model: weights, architecture, config."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return {"model": model.state_dict(), "model_name": cfg.model,
            "model_kwargs": cfg.model_kwargs(), "config": cfg.model_dump()}


def write_checkpoint(path: Path, record: dict[str, Any], state: TrainingState | None = None,
                     **extra: Any) -> None:
    """``record`` (+ ``state`` + ``extra``) to ``path``, atomically: a crash mid-write never
    leaves a truncated checkpoint."""
    atomic_write(Path(path), lambda tmp: _save({**record, **(state.as_dict() if state else {}), **extra}, tmp, path))


def _save(obj: dict[str, Any], tmp: Path, path: Path | str) -> None:
    """``torch.save`` through a Python file, so that a full disk surfaces as the
    ``OSError`` it is (ENOSPC, naming ``path``), not as torch's "unexpected pos" RuntimeError."""
    with open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            cause = exc.__context__
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror, str(path)) from None
            raise


def read_checkpoint(path: Path | str, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's dict, loaded with ``weights_only=True`` only; every failure is a
    ``CheckpointError`` naming the file and what was wrong with it.

    torch's own messages for a refused pickle suggest loading with ``weights_only=False``,
    which would run whatever code the file carries; they are not passed on.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # no Python object refused: not a pickle we can read at all
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, or another format): "
                                  "no pickle or zip header") from None
        raise CheckpointError(
            f"{path}: refused: it holds Python objects besides tensors and plain values, and only "
            "weights-only checkpoints are loaded (files written by histo train or a retrain run)") from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, or another format): "
                              f"{type(exc).__name__}") from None
    if not isinstance(state, dict) or not MODEL_KEYS <= set(state):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: a PyTorch file but not a histo-retrain checkpoint: expected the keys "
                              f"{sorted(MODEL_KEYS)}, found {found}")
    check_architecture(state, path)
    return state


def check_architecture(state: dict[str, Any], path: Path | str) -> None:
    """Raise ``CheckpointError`` unless the weights fit the architecture the checkpoint
    records, before any model is allocated: the name and arguments are checked against
    what the architecture accepts (``model.model_arguments``), then the model is built
    on PyTorch's ``meta`` device (shapes, no memory) and every tensor's name and shape
    compared with the weights'."""
    from histo_core.model import create_model, model_arguments

    name, weights = state["model_name"], state["model"]
    try:
        model_arguments(name, state["model_kwargs"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its recorded architecture cannot be built: {exc}") from None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a mapping of tensor names to tensors")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in create_model(name, **state["model_kwargs"]).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = [f"{k}: {found[k]} where {name!r} has {expected[k]}" for k in expected.keys() & found.keys()
             if found[k] != expected[k]]
    if missing or extra or wrong:
        detail = "; ".join(filter(None, [
            f"{len(missing)} tensor(s) missing (first {missing[0]})" if missing else "",
            f"{len(extra)} unexpected (first {extra[0]})" if extra else "",
            f"{len(wrong)} of another shape (first {sorted(wrong)[0]})" if wrong else ""]))
        raise CheckpointError(f"{path}: its weights do not fit its recorded architecture {name!r} "
                              f"({state['model_kwargs']}): {detail[:600]}")


def check_loadable(path: Path | str) -> None:
    """Raise ``CheckpointError`` unless ``path`` loads (weights only) and its weights fit
    the architecture it records, every tensor's name and shape: the test a version passes
    before it may serve. ``read_checkpoint`` makes both checks (``check_architecture``, on
    the meta device), so no model is allocated here."""
    read_checkpoint(path)
