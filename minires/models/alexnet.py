"""torchvision's AlexNet (the one-GPU variant of Krizhevsky et al., 2012).

Layer indices inside ``features`` and ``classifier`` match torchvision, so
its state_dict keys (``features.0.weight`` ... ``classifier.6.bias``) and a
converted torchvision checkpoint load unchanged.  Initialisation is torch's
default for every layer, as torchvision leaves it.
"""
from .. import nn
from ..nn.checks import check_input

__all__ = ["AlexNet", "alexnet"]


class AlexNet(nn.Module):
    """torchvision's AlexNet: five convolutions, then a classifier of two
    4096-wide hidden layers on 256 x 6 x 6 pooled features."""

    # The smallest side the three 3x3/2 max-pools accept: the first convolution
    # (11x11/4, padding 2) must leave 15 pixels, the first pool 7, the second 3.
    min_input_size = 63

    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        # 6x6 whatever the input size (a 224 input already gives 6x6; smaller
        # ones are spread out by the adaptive pool, as in torchvision).
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def _check_input(self, x):
        conv = self.features[0]
        check_input("AlexNet", x, 4, channels=conv.weight.shape[1], like=conv.weight.data)
        h, w = x.shape[2], x.shape[3]
        if min(h, w) < self.min_input_size:
            raise ValueError(f"AlexNet: input must be at least {self.min_input_size}x"
                             f"{self.min_input_size} pixels (smaller ones vanish in the "
                             f"max-pools), got {h}x{w} (shape {tuple(x.shape)})")

    def forward(self, x):
        self._check_input(x)
        x = self.avgpool(self.features(x))
        pooled_shape = x.shape
        x = x.reshape(x.shape[0], -1)  # torch.flatten(x, 1), inline as in torchvision
        x = self.classifier(x)
        self._save(x, pooled_shape)
        return x

    def backward(self, dlogits):
        pooled_shape = self._restore(dlogits)
        d = self.classifier.backward(dlogits).reshape(pooled_shape)
        return self.features.backward(self.avgpool.backward(d))


def alexnet(num_classes=1000, dropout=0.5):
    """AlexNet with torchvision's layout: 61,100,840 parameters at 1000 classes."""
    return AlexNet(num_classes=num_classes, dropout=dropout)
