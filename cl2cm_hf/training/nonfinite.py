"""Non-finite numbers during training: the errors, and `GuardedOptimizer`, which skips an optimizer
step when no batch of it was finite (with Adam's momentum and weight decay a zero-gradient step
would still move the weights)."""

from collections.abc import Callable

import torch


class NonFiniteLossError(RuntimeError):
    """A loss term (or a gradient) became NaN or Inf."""


class TooManySkippedStepsError(NonFiniteLossError):
    """A stage skipped more than `max_skipped_fraction` of its optimizer steps (on_nonfinite: skip):
    its weights are not the result of training, so nothing of it may be published."""


# The settings that govern each loss term (and the gradients), named when a stage skipped too many
# steps. Any term also turns non-finite when the weights diverge: learning_rate.
TERM_SETTINGS = {
    "sentence": "loss, logit_scale_init_value and learnable_logit_scale (infonce) or margin (triplet)",
    "source": "loss, logit_scale_init_value and learnable_logit_scale (infonce) or margin (triplet)",
    "mt": "lambda_mt and the contrastive settings (logit_scale_init_value, margin)",
    "word": "lambda_word, ot_epsilon, ot_iterations",
    "kt": "lambda_kt, kt_temperature, kt_teacher_entropy, kt_queue_size and the teacher (cross_lingual_model)",
    "gradient": "learning_rate, max_grad_norm",
}


def grads_finite(optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class GuardedOptimizer(torch.optim.Optimizer):
    """An optimizer whose `step` runs only when `should_step()` allows it; everything else (param
    groups, state, state dict) is the wrapped optimizer's. As accelerate's `AcceleratedOptimizer`, it
    does not call `Optimizer.__init__`: it holds no parameters of its own."""

    def __init__(self, optimizer: torch.optim.Optimizer, should_step: Callable[[], bool]):
        self.optimizer = optimizer
        self.should_step = should_step

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, state):
        self.optimizer.state = state

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, param_groups):
        self.optimizer.param_groups = param_groups

    @property
    def defaults(self):
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults):
        self.optimizer.defaults = defaults

    def add_param_group(self, param_group):
        self.optimizer.add_param_group(param_group)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        return self.optimizer.step(closure) if self.should_step() else None

    def __repr__(self):
        return f"{type(self).__name__}({self.optimizer!r})"
