# Helpers of the per-second feature stores (features.smk): kept apart, as `snakemake --lint` asks.
from clipvip.features import FeatureOptions
from clipvip.registry import FEATURE_EXTRACTORS

FEATURES = config.get("features") or {}
FEATURE_DATASETS = list(FEATURES.get("datasets") or [])
for _ds in FEATURE_DATASETS:
    if _ds not in DATASETS:
        raise WorkflowError(f"config error at features.datasets: {_ds!r} is not a key of datasets")
if FEATURE_DATASETS:
    # Checked at parse time like every stage's options (a typo fails `snakemake -n` naming the key).
    _FEATURE_OPTS = FeatureOptions.from_dict(FEATURES.get("options") or {}, "features.options")
    # A GPU only where the extractor wants one and the options do not pin the CPU (the demo's device: cpu).
    _WANTS_GPU = getattr(FEATURE_EXTRACTORS.get(_FEATURE_OPTS.extractor), "wants_gpu", False)
    FEATURES_GPU = 1 if _WANTS_GPU and _FEATURE_OPTS.device != "cpu" else 0
else:
    _FEATURE_OPTS, FEATURES_GPU = None, 0


def feature_index(ds):
    return f"{R}/features/{ds}/index.json"


def features_frames_input(wc):
    # The frame store of the same shard: its fixed-rate pool is the features' frame source ("video": not needed).
    if (FEATURES.get("options") or {}).get("source") == "video":
        return []
    return [f"{R}/frames/{wc.ds}/{wc.shard}.h5"]


def features_model_input(wc):
    opts = FEATURES.get("options") or {}
    return [p for key in ("model", "weights") if opts.get(key) for p in local_model_input(opts[key])]
