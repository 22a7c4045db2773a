"""The floating-point precisions fedlrs runs in, by the name a configuration gives them."""

import torch

#: a run's ``dtype`` knob -> the torch dtype
DTYPES = {"float64": torch.float64, "float32": torch.float32}
