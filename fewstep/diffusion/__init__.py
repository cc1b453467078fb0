"""Pure tensor diffusion math: paths, parameterisations, solvers, time grids."""

from .parameterization import (PREDICTION_TYPES, PredictionType, apply_lcm_boundary, convert_prediction, from_x0_eps,
                               lcm_boundary_scalings, to_x0_eps)
from .paths import EDMPath, FlowPath, GaussianPath, TrigFlowPath, VPPath, convert_state, expand_like, path_from_config
from .solvers import (ddim_step, euler_step, forward_noise, heun_step, pf_ode_velocity, renoise_step, solver_step,
                      tcd_step)
from .timesteps import (dynamic_shift_mu, exponential_time_shift, sample_training_times, sampling_times, solver_grid,
                        shift_sigma)

__all__ = [
    "PREDICTION_TYPES", "PredictionType", "apply_lcm_boundary", "convert_prediction", "from_x0_eps",
    "lcm_boundary_scalings", "to_x0_eps",
    "EDMPath", "FlowPath", "GaussianPath", "TrigFlowPath", "VPPath", "convert_state", "expand_like",
    "path_from_config", "ddim_step", "euler_step", "forward_noise", "heun_step", "pf_ode_velocity",
    "renoise_step", "solver_step", "tcd_step", "dynamic_shift_mu", "exponential_time_shift",
    "sample_training_times", "sampling_times", "solver_grid", "shift_sigma",
]
