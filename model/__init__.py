"""MegEngine RepVGG models: pure definitions, a registry of named architectures, and the
reparameterization that fuses train-form blocks into deploy-form 3x3 convs."""
from .backbone import Backbone, FeatureInfo
from .finetune import Staged, trainable_parameters
from .layers import ConvBn, GlobalAvgPool, SEBlock
from .registry import UnknownModelError, get_model, list_models, register_model
from .reparam import convert_to_deploy, is_deploy
from .repvgg import REPVGG_VARIANTS, RepVGG, RepVGGBlock, custom_l2
from .repvggplus import REPVGGPLUS_VARIANTS, RepVGGplus, RepVGGplusBlock
from . import parity  # noqa: E402  (model.parity.check_parity: any module, train vs deploy)
from . import binary  # noqa: E402,F401  (registers BinaryResNet18-awnas / -bmxnet)

# The official name for the whole-model conversion.
repvgg_model_convert = convert_to_deploy

__all__ = [
    "ConvBn", "GlobalAvgPool", "SEBlock", "RepVGGBlock", "RepVGG", "RepVGGplusBlock", "RepVGGplus",
    "REPVGG_VARIANTS", "REPVGGPLUS_VARIANTS", "get_model", "list_models", "register_model",
    "UnknownModelError", "convert_to_deploy", "repvgg_model_convert", "is_deploy", "custom_l2",
    "Backbone", "FeatureInfo", "Staged", "trainable_parameters", "parity",
]
