"""Model zoo: MLPs, ConvNets, ResNets, Vision Transformers and Swin in Flax linen.

Every model is a `flax.linen.Module` called as `model.apply(variables, x, train=...)`
on channels-last inputs and returns float32 logits `(batch, num_classes)`.
Importing this package registers the named variants; build them with
`create(name, **overrides)` and size them with `count_params`.
"""

from nets.registry import (
    count_params,
    create,
    list_families,
    list_models,
    model_defaults,
    model_family,
    model_fields,
    register,
)

# Importing a family module registers its variants.
from nets import layers, attention  # noqa: E402
from nets.mlp import MLP  # noqa: E402
from nets.cnn import CNN  # noqa: E402
from nets.resnet import ResNet  # noqa: E402
from nets.vit import VisionTransformer  # noqa: E402
from nets.alexnet import AlexNet  # noqa: E402
from nets.vgg import VGG  # noqa: E402
from nets.inception import GoogLeNet, InceptionV2, InceptionV3  # noqa: E402
from nets.inception_resnet import InceptionResNetV2  # noqa: E402
from nets.deformable import DeformableConv, DeformableResNet, deformable_conv  # noqa: E402
from nets.convnext import ConvNeXt  # noqa: E402
from nets.nfnet import NFNet  # noqa: E402
from nets.swin import SwinTransformer  # noqa: E402
from nets.transformer import Transformer  # noqa: E402
from nets.seq2seq import Seq2Seq  # noqa: E402
from nets.captioning import ShowAttendTell  # noqa: E402
from nets.language_model import RecurrentLM, TransformerLM  # noqa: E402
from nets.gan import DCGAN, Discriminator, Generator  # noqa: E402
from nets.diffusion import UNet  # noqa: E402
from nets import decoding, position  # noqa: E402
from nets.attention import AdditiveAttention, MultiHeadAttention, dot_product_attention  # noqa: E402
from nets.rnn import (BidirectionalRNN, GRUCell, LSTMCell, RNNClassifier, RNNLayer,  # noqa: E402
                      SimpleRNNCell, StackedRNN)

__all__ = [
    'AdditiveAttention', 'DCGAN', 'Discriminator', 'Generator', 'UNet', 'RecurrentLM', 'Seq2Seq', 'ShowAttendTell', 'TransformerLM',
    'BidirectionalRNN', 'GRUCell', 'LSTMCell', 'RNNClassifier', 'RNNLayer', 'SimpleRNNCell', 'StackedRNN',
    'AlexNet', 'CNN', 'ConvNeXt', 'DeformableConv', 'DeformableResNet', 'NFNet',
    'deformable_conv', 'GoogLeNet', 'InceptionResNetV2', 'InceptionV2', 'InceptionV3', 'MLP',
    'MultiHeadAttention', 'ResNet', 'SwinTransformer', 'Transformer', 'VGG', 'VisionTransformer',
    'attention', 'decoding', 'position', 'count_params', 'create', 'dot_product_attention', 'layers',
    'list_families', 'list_models', 'model_defaults', 'model_family', 'model_fields', 'register',
]
