"""Train ResNet-20 on CIFAR-10 in a loop you can read at once.

    python examples/train_cifar.py PATH/TO/cifar10 [--epochs 1] [--max-steps N]

The whole of training is the loop below: a batch from the loader, one
``train_step`` (forward, loss, the hand-written backward, the SGD update, the
schedule), and ``evaluate`` at the end of each epoch.  ``minires train`` adds
checkpoints, resume, time budgets and Ctrl-C handling around the same step.
"""
import argparse

import minires
from minires import nn, optim
from minires.data import BatchLoader, load_cifar10
from minires.engine import evaluate, train_step
from minires.models import resnet20


def train(data, epochs=1, max_steps=None, batch_size=128, lr=0.1, log_every=50):
    minires.manual_seed(0)
    train_images, train_labels, _ = load_cifar10(data, "train")
    test_images, test_labels, _ = load_cifar10(data, "test")
    loader = BatchLoader(train_images, train_labels, batch_size, shuffle=True, augment=True)
    steps = epochs * len(loader) if max_steps is None else max_steps
    model = resnet20()
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = optim.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    step, accuracy = 0, None
    for epoch in range(epochs):
        for x, y in loader:
            loss, _ = train_step(model, crit, opt, sched, x, y)
            step += 1
            if step % log_every == 0:
                print(f"step {step}/{steps}: training loss {float(loss):.3f}")
            if step == steps:
                break
        _, accuracy = evaluate(model, test_images, test_labels)
        print(f"epoch {epoch + 1}: test accuracy {100 * accuracy:.2f}%")
        if step == steps:
            break
    return model, accuracy


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a CIFAR-10 folder (python batches, binary, or JPEG archives)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int)
    args = ap.parse_args()
    train(args.data, args.epochs, args.max_steps)
