"""Evaluation of explanations: Pointing Game, region perturbation (AOPC), hidden-layer feature
ablation, class-discriminativeness. Functions work per image / per batch and return plain rows
(dicts / DataFrames) so a resumable runner can append results incrementally."""
from .pointing import (
    CENTER, DEFAULT_TOLERANCE, PointingTarget, argmax_point, center_point, map_to_image, nearest_distance,
    per_class_table, pointing_game, pointing_hit, pointing_row, pointing_rows, pointing_summary,
    pointing_targets, resize_map, scaled_tolerance,
)
from .perturbation import (
    BASELINES, ORDERS, PerturbationCurve, aopc, aopc_summary, make_baseline, patch_order,
    patch_scores, perturbation_curves, perturbation_rows, region_perturbation,
    region_perturbation_naive,
)
from .discriminativeness import (
    discriminativeness_rows, discriminativeness_summary, max_abs_diff, pearson, top_iou, top_mask,
)
from .ablation import DEFAULT_KS, ablation_summary, feature_ablation
from .runner import PROTOCOLS, RunConfig, RunResult, load_results, run_evaluation, summarize
