"""The ``clipvip train`` internals: options, the DeepSpeed loop, checkpoints/export, submitit launching.

Entry point: ``clipvip.train:main``. Modules:
    options      TrainOptions (every ``--options`` key, documented, stage-dependent defaults)
    step         ContrastiveStep: the nn.Module DeepSpeed wraps (features a loss needs -> loss)
    checkpoints  DeepSpeed checkpoint tags, pruning, status file, fp32 consolidation and model export
    loop         run(args, opts): one rank's training
    submit       the submitit job (Checkpointable) and its submission
"""
