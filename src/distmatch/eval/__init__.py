"""Evaluation: vector metrics, image metrics on an in-domain feature network, optional Inception FID, speed."""
from .features import FeatureNet, get_feature_net
from .images import class_coverage, frechet_distance, image_metrics, kid, prdc
from .speed import measure_throughput, peak_memory_mb
from .vectors import energy_distance, mmd_rbf, mode_stats, sliced_wasserstein, vector_metrics

__all__ = [
    "FeatureNet", "get_feature_net", "class_coverage", "frechet_distance", "image_metrics", "kid",
    "prdc", "measure_throughput", "peak_memory_mb", "energy_distance", "mmd_rbf", "mode_stats",
    "sliced_wasserstein", "vector_metrics",
]
