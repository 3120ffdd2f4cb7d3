"""The promotion gate: a challenger replaces the champion only when it is good enough.

Both AUCs come from the same hold-out images in the same run, so they are comparable;
a champion scored on another day's test set would not be. Optionally the improvement
must also be significant under DeLong's paired test on those images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from histo_core.config import GateConfig

Outcome = Literal["promoted", "rejected", "conflict"]


@dataclass(frozen=True)
class Decision:
    """What the gate decided and every reason, in the order they were weighed."""

    outcome: Outcome
    reasons: list[str] = field(default_factory=list)

    @property
    def promote(self) -> bool:
        return self.outcome == "promoted"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Circumstances:
    """What the run knows about the champion besides the AUCs, when it decides."""

    champion_problem: str | None = None  # why the champion in the store cannot serve (judged as none)
    champion_version: str | None = None
    champion_moved: bool = False  # the pointer changed since this run evaluated the champion
    same_weights_as: str | None = None  # the champion version whose weights the challenger's are


def decide(challenger_auc: float, champion_auc: float | None, cfg: GateConfig = GateConfig(),
           p_value: float | None = None, circumstances: Circumstances = Circumstances(),
           sensitivities: tuple[float, float] | None = None) -> Decision:
    """The one promotion decision. The challenger is **promoted** when it clears the
    floor, beats the champion by the margin on the same hold-out and, if
    ``cfg.significance`` asks for it, the paired test's p-value is below ``cfg.alpha``;
    and then only if the champion is still the one it was compared with (else
    **conflict**: another run moved it) and its weights are not the champion's own (a
    re-run on unchanged data finds its cached model). Otherwise **rejected**.

    ``sensitivities``: (challenger, champion) at their operating points on the same
    hold-out; with ``cfg.max_sensitivity_drop`` set, the challenger may not fall further
    below the champion's than that (a better AUC bought with missed tumours is refused).

    ``registry.set_champion`` still guards the move itself (a conditional write, and the
    version checked whole), so a race lost after this decision ends as a conflict there."""
    clears_floor = challenger_auc >= cfg.auc_floor
    reasons = [f"challenger AUC {challenger_auc:.4f} {'>=' if clears_floor else '<'} floor {cfg.auc_floor:.4f}"]
    better = clears_floor
    if champion_auc is None:
        reasons.append("no champion yet")
    else:
        needed = champion_auc + cfg.min_improvement
        beats = challenger_auc >= needed
        margin = f" + margin {cfg.min_improvement:.4f}" if cfg.min_improvement else ""
        reasons.append(f"challenger AUC {challenger_auc:.4f} {'>=' if beats else '<'} champion AUC "
                       f"{champion_auc:.4f}{margin} on the same hold-out")
        better = better and beats
        if cfg.significance == "delong":
            if p_value is None:
                raise ValueError("the gate asks for a DeLong test but no p-value was computed")
            significant = p_value < cfg.alpha
            reasons.append(f"DeLong paired test p = {p_value:.4f} {'<' if significant else '>='} alpha {cfg.alpha}")
            better = better and significant
        if cfg.max_sensitivity_drop is not None:
            if sensitivities is None:
                raise ValueError("the gate asks for the sensitivity at the operating point but none was measured")
            challenger_sens, champion_sens = sensitivities
            kept = challenger_sens >= champion_sens - cfg.max_sensitivity_drop
            reasons.append(f"sensitivity at the operating point {challenger_sens:.4f} {'>=' if kept else '<'} "
                           f"champion's {champion_sens:.4f} - {cfg.max_sensitivity_drop:.4f}")
            better = better and kept
    if circumstances.champion_problem:
        reasons.append(f"the champion {circumstances.champion_version} cannot serve "
                       f"({circumstances.champion_problem}); judged as if there were none")
    if not better:
        return Decision("rejected", reasons)
    if circumstances.champion_moved:
        return Decision("conflict", [*reasons, "champion changed underneath this run since it was evaluated; "
                                               "not promoting"])
    if circumstances.same_weights_as:
        return Decision("rejected", [*reasons, f"the challenger's weights are the champion's "
                                               f"({circumstances.same_weights_as}): nothing new to promote"])
    return Decision("promoted", reasons)
