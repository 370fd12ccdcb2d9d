"""The model lifecycle as library functions: tasks and scoring, training, distillation, int8 quantization,
evaluation and its report, and the checkpoint writer they share. ``tasks``, ``evaluate`` and ``report`` import
no torch (the gateway runs evaluations through them)."""
