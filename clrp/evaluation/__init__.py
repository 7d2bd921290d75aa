"""Evaluation of explanations: Pointing Game, class-discriminativeness, region perturbation (AOPC),
hidden-layer feature ablation -- each a protocol plug-in (:mod:`.protocol`) -- the resumable
runner (:mod:`.runner`) and its run folders (:mod:`.runs`). Functions work per image / per batch
and return plain rows (dicts / DataFrames) so a run can append results incrementally."""
from .pointing import (
    CENTER, DEFAULT_TOLERANCE, PointingTarget, argmax_point, at_tolerance, center_point, is_hit, map_to_image,
    nearest_distance, per_class_table, pointing_game, pointing_hit, pointing_row, pointing_rows, pointing_summary,
    pointing_targets, resize_map, scaled_tolerance,
)
from .discriminativeness import (
    discriminativeness_rows, discriminativeness_summary, max_abs_diff, pearson, top_iou, top_mask,
)
from .perturbation import (
    BASELINES, ORDERS, PerturbationCurve, aopc, aopc_summary, make_baseline, patch_order,
    patch_scores, perturbation_curves, perturbation_rows, region_perturbation,
    region_perturbation_naive,
)
from .ablation import DEFAULT_KS, ablation_summary, feature_ablation
from .protocol import REGISTRY as PROTOCOL_REGISTRY, Batch, Chart, Protocol, register_protocol
from .runner import (
    PROTOCOLS, DurationEstimate, RunConfig, RunResult, estimate_duration, load_results, run_evaluation, summarize,
)
from .progress import listening as listen_progress
from .runs import RunFolder
