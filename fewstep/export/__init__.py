"""Export fewstep students to diffusers: LoRA (diffusers/peft and kohya/ComfyUI keys) or full pipelines,
always with the few-step scheduler and exact timesteps that reproduce the student's sampler, verified by
loading the export back before anything is written in place.

    fewstep export RUN_DIR --format lora|kohya|full [--fuse] [--ema] [--dtype fp16|bf16|fp32] [--out DIR]
    fewstep sample --model EXPORT_DIR|RUN_DIR --steps N --prompt ... | --class ...

Objectives choose their scheduler through `objective.export_scheduler(steps) -> FewStepScheduler`
(default: `schedulers.default_export_scheduler`, for samplers that jump to x0 and re-noise).
"""

from .core import (DTYPES, FORMATS, ExportError, LoadedExport, export_run, load_export, network_sha256, open_run,
                   read_info, verify_export)
from .families import FAMILIES, ExportFamily, decode, family_of, generate, scheduler_loop
from .lora import LoraLoadError, load_lora_strict, lora_state_dict, merged_state_dict, to_kohya
from .schedulers import (FewStepScheduler, SchedulerExportError, consistency_scheduler, default_export_scheduler,
                         flow_scheduler, lcm_scheduler, scheduler_for)

__all__ = [
    "DTYPES", "FORMATS", "ExportError", "LoadedExport", "export_run", "load_export", "network_sha256", "open_run",
    "read_info", "verify_export", "FAMILIES", "ExportFamily", "decode", "family_of", "generate", "scheduler_loop",
    "LoraLoadError", "load_lora_strict", "lora_state_dict", "merged_state_dict", "to_kohya", "FewStepScheduler",
    "SchedulerExportError", "consistency_scheduler", "default_export_scheduler", "flow_scheduler", "lcm_scheduler",
    "scheduler_for",
]
