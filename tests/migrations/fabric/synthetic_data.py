"""Synthetic stand-ins for the data sets the Lightning Fabric examples download.

Each has the shapes, dtypes and length of the real one (MNIST, WikiText2) unless asked for fewer
samples, holds something a model can learn (so a test can ask for a falling loss), and is
deterministic: the same index gives the same sample in every process and in every environment,
so the Fabric and the switchyard runs read identical data.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

MNIST_TRAIN_SIZE = 60_000
MNIST_TEST_SIZE = 10_000
WIKITEXT2_VOCAB_SIZE = 33_278
WIKITEXT2_SAMPLES = 59_674
"""Blocks of 35 tokens in WikiText2's training text (2,088,628 tokens)."""


class SyntheticMNIST(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """MNIST's shapes: ``(image [1, 28, 28] float32, label int64 in 0..9)``.

    Each class has a fixed random pattern; a sample is its class's pattern plus noise, normalized
    as the example's ``transforms.Normalize((0.1307,), (0.3081,))`` would leave it.
    """

    def __init__(self, size: int, train: bool = True, seed: int = 0) -> None:
        self.size = size
        self._offset = 0 if train else 1 << 40
        self._seed = seed
        patterns = torch.Generator().manual_seed(seed)
        self._patterns = torch.rand(10, 1, 28, 28, generator=patterns)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        # one generator per sample: a sample does not depend on which samples were read before
        generator = torch.Generator().manual_seed(self._seed * 1_000_003 + self._offset + index)
        label = index % 10
        noise = torch.rand(1, 28, 28, generator=generator)
        image = 0.6 * self._patterns[label] + 0.4 * noise
        return (image - 0.1307) / 0.3081, torch.tensor(label)


class SyntheticWikiText2(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """WikiText2's shapes as ``lightning.pytorch.demos.WikiText2`` gives them: sample ``i`` is
    ``(tokens[i*35 : i*35+35], tokens[i*35+1 : i*35+36])``, int64, with ``vocab_size``.

    The token stream is drawn from a Zipf distribution (as word frequencies are), so a language
    model's loss falls from ``log(vocab_size)`` as soon as it learns the frequencies.
    """

    def __init__(
        self,
        samples: int = WIKITEXT2_SAMPLES,
        vocab_size: int = WIKITEXT2_VOCAB_SIZE,
        block_size: int = 35,
        seed: int = 0,
    ) -> None:
        self.block_size = block_size
        self._vocab_size = vocab_size
        self._samples = samples
        weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
        generator = torch.Generator().manual_seed(seed)
        self.data = torch.multinomial(
            weights, (samples + 1) * block_size + 1, replacement=True, generator=generator
        )

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def __len__(self) -> int:
        return self._samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self._samples:
            raise IndexError(f"index {index} out of range for {self._samples} samples")
        start = index * self.block_size
        end = start + self.block_size
        return self.data[start:end], self.data[start + 1 : end + 1]
