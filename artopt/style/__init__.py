"""Style transfer: images, loss networks, losses and the stylize engine."""

from .engine import StepInfo, StylizeConfig, resolve_device, stylize
from .images import ImageError, load_image, pil_to_tensor, save_image, tensor_to_pil
from .loss_nets import LossNet, LossNetError, build_loss_net
from .losses import StyleLoss

__all__ = [
    "ImageError", "LossNet", "LossNetError", "StepInfo", "StyleLoss", "StylizeConfig",
    "build_loss_net", "load_image", "pil_to_tensor", "resolve_device", "save_image", "stylize",
    "tensor_to_pil",
]
