"""Profiling and quantization spread over Ray workers (``--ray auto|ADDRESS``).

Ray does the scheduling, placement, object transfer and retries; this package only connects to
Ray and maps a function over tasks (``allocator.distributed.pool``, which imports nothing of
allocator but its errors, so every stage may use it). Each stage cuts its own work into
independent tasks, next to the functions those tasks run:

- profile (``allocator.profile.distributed``), measured tables (``kl``, ``block_error``): the
  units of each block are one task. A worker loads the model offloaded from its folder (once
  per worker process, weights read lazily) and receives the clean hidden states the block
  needs from the driver; the driver journals every finished unit as it arrives, so a rerun
  with ``--resume`` skips them;
- profile, proxy estimators (``hessian``, ``hessian_diag``, ``fisher``, ``kfac``): the shared
  statistics (the capture's X^T X, the Fisher squares, K-FAC's G) are computed in the driver,
  block by block; the option sweep of each block's units (every option compressed, GPTQ ones
  included, and scored) is one task;
- apply (``allocator.quant.distributed``): the units of a block are compressed in parallel
  tasks (for GPTQ/SparseGPT after the driver captured the block's input Hessians; blocks stay
  sequential because each block's calibration inputs come from the compressed blocks below it).

Every task runs the same functions as the single-process path, so checkpoints are
bit-identical and tables equal (tested with ``ray.init(num_cpus=2)``).
"""
