"""ImageNet and CIFAR pre-activation ResNets (plain, ACT, SACT)."""

from sact_tf.models.resnet import ResNet, cifar_resnet, imagenet_resnet

__all__ = ['ResNet', 'cifar_resnet', 'imagenet_resnet']
