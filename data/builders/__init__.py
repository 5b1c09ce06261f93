"""TFDS builders for the datasets this project can prepare offline.

All are skipped in the TFDS registry (TFDS already owns `fashion_mnist`);
reach them through `data.catalog`.
"""

from data.builders.digits import Digits
from data.builders.fashion_mnist import FashionMnist
from data.builders.mnist1d import Mnist1d, Mnist1dShuffled
from data.builders.mnist5k import Mnist5k

__all__ = ['Digits', 'FashionMnist', 'Mnist1d', 'Mnist1dShuffled', 'Mnist5k']
