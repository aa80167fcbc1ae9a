"""Model zoo for small datasets: plain ``nn.Module`` networks that survive deep copies, ``torch.save``, DDP, forward
hooks and torch-pruning's dependency tracing.

Build a model by name::

    from resprout.models import build_model
    model = build_model("resnet20", in_channels=3, num_classes=10, width=0.5)

Built-in names: ``cnn``, ``resnet20/32/56/110``, ``resnet18/34/50`` (option ``stem``), ``vgg11/16/19`` (option
``head``), ``mobilenetv2``, ``densenet-bc`` / ``densenet-bc-100``, ``wrn`` / ``wrn-16-4`` / ``wrn-28-10`` /
``wrn-40-2``; every one takes ``width`` (channel multiplier, channels = ``max(1, round(c * width))``). External models:
``tv:<name>`` (torchvision) and ``timm:<name>`` (timm), if installed. Add your own with :func:`register_model`.
"""

from resprout.models._common import scale_channels
from resprout.models.registry import available_models, build_model, model_options, register_model

# Imported for their side effect: registering the built-in models.
from resprout.models import cnn, densenet, mobilenet, resnet, vgg, wrn  # noqa: E402,F401  isort:skip

__all__ = ["available_models", "build_model", "model_options", "register_model", "scale_channels"]
