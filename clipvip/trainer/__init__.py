"""The ``clipvip train`` internals: command line, plan, the DeepSpeed loop, checkpoints/export, launching.

Entry point: ``clipvip.train:main`` (the stage module; nothing here imports a stage module). Modules:
    args         the command line: build_parser, parse_args -> (args, TrainOptions)
    options      TrainOptions (every ``--options`` key, documented, stage-dependent defaults)
    plan         the training plan: DeepSpeed JSON, batch geometry, warm-up, precision, loader workers, steps
    collectives  every collective the trainer issues, its tensors on the engine's device (NCCL-safe)
    step         ContrastiveStep: the nn.Module DeepSpeed wraps (features a loss needs -> fp32 loss)
    tasks        retrieval | recognition: model, data, step module, optimizer groups, validation, export files
    checkpoints  DeepSpeed checkpoint tags, pruning, status file, fp32 consolidation and model export
    loop         run(args, opts): one rank's training
    launch       launch(argv, args, opts): torchrun relaunch / submitit / this process, exit-code mapping
    submit       the submitit job (Checkpointable) and its submission
"""
