"""The promotion gate: a challenger replaces the champion only when it is good enough.

Both AUCs come from the same hold-out images in the same run, so they are comparable;
a champion scored on another day's test set would not be. Optionally the improvement
must also be significant under DeLong's paired test on those images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from histo_core.config import GateConfig


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def decide(challenger_auc: float, champion_auc: float | None, cfg: GateConfig = GateConfig(),
           p_value: float | None = None) -> Decision:
    """Promote when the challenger clears the floor, beats the champion by the margin and,
    if ``cfg.significance`` asks for it, the paired test's p-value is below ``cfg.alpha``."""
    clears_floor = challenger_auc >= cfg.auc_floor
    reasons = [f"challenger AUC {challenger_auc:.4f} {'>=' if clears_floor else '<'} floor {cfg.auc_floor:.4f}"]
    if champion_auc is None:
        reasons.append("no champion yet")
        return Decision(clears_floor, reasons)
    needed = champion_auc + cfg.min_improvement
    beats = challenger_auc >= needed
    margin = f" + margin {cfg.min_improvement:.4f}" if cfg.min_improvement else ""
    reasons.append(f"challenger AUC {challenger_auc:.4f} {'>=' if beats else '<'} champion AUC "
                   f"{champion_auc:.4f}{margin} on the same hold-out")
    significant = True
    if cfg.significance == "delong":
        if p_value is None:
            raise ValueError("the gate asks for a DeLong test but no p-value was computed")
        significant = p_value < cfg.alpha
        reasons.append(f"DeLong paired test p = {p_value:.4f} {'<' if significant else '>='} alpha {cfg.alpha}")
    return Decision(clears_floor and beats and significant, reasons)
